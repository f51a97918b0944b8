"""The request trace through the real server: a streamed and a non-stream request carry a Server-Timing header
with every stage of their first audio (in order: no stage is negative, and they add up to the total), the
benchmark's parser reads it, and lighttts_first_audio_stage_seconds moves by every stage for them and for a
bistream WebSocket request (whose only report is the histogram). Nothing here is timed: only presence and
order."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from server_harness import voice_wav

from light_tts.bench.serving.stage_table import TOTAL, parse_server_timing
from light_tts.server.ipc.stage_trace import STAGES

HISTOGRAM = "lighttts_first_audio_stage_seconds"


def stage_histogram(server) -> dict[str, tuple[float, float]]:
    """stage -> (count, sum) of the histogram, summed over the HTTP workers."""
    out: dict[str, list[float]] = {}
    for (name, labels), value in server.metrics().items():
        if name in (f"{HISTOGRAM}_count", f"{HISTOGRAM}_sum"):
            entry = out.setdefault(dict(labels)["stage"], [0.0, 0.0])
            entry[name.endswith("_sum")] += value
    return {stage: (c, s) for stage, (c, s) in out.items()}


def assert_every_stage_moved(before, after) -> None:
    """Each stage was observed at least once more, and what was added is not negative (stages in order)."""
    for stage in STAGES:
        count, total = after.get(stage, (0.0, 0.0))
        count0, total0 = before.get(stage, (0.0, 0.0))
        assert count > count0, (stage, before.get(stage), after.get(stage))
        assert total >= total0, (stage, total0, total)


def post(server, stream: bool, seed: int) -> httpx.Response:
    form = {
        "tts_text": "Where does the time go?",
        "prompt_text": "A short prompt.",
        "stream": str(stream).lower(),
        "seed": str(seed),
        "fixed_speech_tokens": "40",
    }
    files = {"prompt_wav": ("p.wav", voice_wav(seed), "audio/wav")}
    return httpx.post(f"{server.url}/inference_zero_shot", data=form, files=files, timeout=120)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non_stream"])
def test_http_answer_carries_every_stage_in_order(server, stream):
    before = stage_histogram(server)
    r = post(server, stream, seed=31 + stream)
    assert r.status_code == 200 and len(r.content) > 0
    stages = parse_server_timing(r.headers["server-timing"])
    # a stream's headers leave with its first chunk, before its bytes are written: every stage but "write"
    want = [*STAGES[:-1], TOTAL] if stream else [*STAGES, TOTAL]
    assert list(stages) == want
    assert all(seconds >= 0 for seconds in stages.values()), stages
    assert sum(stages[s] for s in want[:-1]) == pytest.approx(stages[TOTAL], abs=len(want) * 1e-6)
    assert_every_stage_moved(before, stage_histogram(server))


def test_bistream_websocket_reports_every_stage_to_the_histogram(server):
    async def one() -> int:
        num_bytes = 0
        async with websockets.connect(f"{server.url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:
            await ws.send(json.dumps({"prompt_text": "A short prompt.", "seed": 7, "fixed_speech_tokens": 40}))
            await ws.send(voice_wav(33))
            await ws.send(json.dumps({"tts_text": "Pieces of "}))
            await ws.send(json.dumps({"tts_text": "a sentence."}))
            await ws.send(json.dumps({"finish": True}))
            async for message in ws:
                num_bytes += len(message)
        return num_bytes

    before = stage_histogram(server)
    assert asyncio.run(one()) > 0
    assert_every_stage_moved(before, stage_histogram(server))


def test_voice_conversion_carries_its_stages_in_order(server):
    """Voice conversion has no LLM step: its header has every stage but the prefill's three (and the write, as a
    stream), the source's tokens going to the decode process as they came."""
    files = {"audio": ("s.wav", voice_wav(34, seconds=2.0)), "prompt_audio": ("p.wav", voice_wav(35))}
    r = httpx.post(
        f"{server.url}/v1/audio/voice-conversion",
        data={"response_format": "pcm", "stream": "true"},
        files=files,
        timeout=120,
    )
    assert r.status_code == 200 and len(r.content) > 0, r.text
    stages = parse_server_timing(r.headers["server-timing"])
    want = [s for s in STAGES[:-1] if s not in ("prefill_wait", "prefill", "first_hop")] + [TOTAL]
    assert list(stages) == want
    assert all(seconds >= 0 for seconds in stages.values()), stages
