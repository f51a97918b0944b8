"""CosyVoice3 served end to end, on the CPU: one server with a tiny CosyVoice3 model (the default) and a tiny
CosyVoice2 model side by side. Every request gets its own model's audio, equal to that model's offline pipeline
(light_tts/pipeline.py) for the same seed: zero-shot over the form (whole, streamed, with a speed change), the
bistream WebSocket, the OpenAI speech endpoint and its text-in WebSocket; saved voices keep their features per
frontend (the two families' frontends differ: speech tokenizer v3, 12 kHz prompt mel, system prompt).

Not here: CosyVoice3's instruct prompt over the APIs. This server refuses `instructions` (the family's
llm_prompt(INSTRUCT, ...) is tested offline in test/test_families.py); the branch that adds instruct to the APIs
adds its end-to-end test.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import websockets
from server_harness import ServerProcess, voice_wav
from test_synthesis import PROMPT_TEXT, assert_same_audio, bistream, reference_pcm

from light_tts.decode.engine import to_int16

CV3, CV2 = "cv3", "cv2"
# with seed 18 the tiny random CosyVoice3 LM speaks this for 126 tokens before a stop id: three streamed chunks
LONG_TEXT, LONG_SEED = "Streaming works on this model.", 18
SAVED = ("lighttts_prompt_features_total", (("source", "saved"),))
COMPUTED = ("lighttts_prompt_features_total", (("source", "computed"),))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from light_tts.tools.make_model import writer_of

    root = tmp_path_factory.mktemp("families")
    return {CV3: writer_of("cosyvoice3")(root / CV3, "tiny", 0), CV2: writer_of("cosyvoice2")(root / CV2, "tiny", 0)}


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    srv = ServerProcess(
        f"{CV3}={model_dirs[CV3]}",
        tmp_path_factory.mktemp("logs") / "cosyvoice3.log",
        "--model_dir",
        f"{CV2}={model_dirs[CV2]}",
        "--data_dir",
        str(tmp_path_factory.mktemp("voices")),
        "--log_level",
        "info",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def post(
    url: str,
    model: str,
    text: str,
    seed: int,
    stream: bool = False,
    speed: float = 1.0,
    voice: int = 1,
    voice_id: str | None = None,
    **fields: str,
) -> tuple[int, bytes, int]:
    """(status, body, number of body chunks) of /inference_zero_shot; `fields`: more form fields."""
    data = {
        "tts_text": text,
        "seed": str(seed),
        "stream": str(stream).lower(),
        "speed": str(speed),
        "tts_model_name": model,
        **fields,
    }
    files = None
    if voice_id is None:
        data["prompt_text"] = PROMPT_TEXT
        files = {"prompt_wav": ("p.wav", voice_wav(voice), "audio/wav")}
    else:
        data["voice_id"] = voice_id
    with httpx.stream("POST", f"{url}/inference_zero_shot", data=data, files=files, timeout=120) as r:
        chunks = list(r.iter_raw())
        return r.status_code, b"".join(chunks), len(chunks)


def test_each_family_gets_its_own_decode_group(server):
    log = server.log_path.read_text()
    decodes = dict(re.findall(r"topology: (decode\d+) serves (\w+) on cpu", log))
    assert sorted(decodes.values()) == [CV2, CV3]  # different codecs never share a decode process
    assert httpx.get(f"{server.url}/query_tts_model").json() == {"tts_models": [CV3, CV2]}


def test_zero_shot_equals_each_models_pipeline(server, pipelines):
    """Both families at once, whole and streamed (CosyVoice3's stream in three chunks), CosyVoice3 with a speed
    change, and "default" (the first model, CosyVoice3): each equals its own model's offline pipeline."""
    jobs = [
        (CV3, LONG_TEXT, LONG_SEED, False, 1.0),
        (CV3, LONG_TEXT, LONG_SEED, True, 1.0),
        (CV3, "Hello there.", 11, False, 1.5),
        ("default", "Hello there.", 3, False, 1.0),
        (CV2, "Hello there.", 11, False, 1.0),
        (CV2, "Hello there.", 5, True, 1.0),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda job: post(server.url, *job), jobs))
    for (model, text, seed, stream, speed), (status, body, _num_chunks) in zip(jobs, replies):
        assert status == 200, body
        want = reference_pcm(pipelines[CV2 if model == CV2 else CV3], text, voice_wav(1), seed, stream, speed)
        assert_same_audio(body, want)
    assert replies[1][2] >= 3  # the CosyVoice3 stream came in chunks, the first before the LLM finished


def test_fixed_speech_tokens_force_the_length(server):
    """bench.streams' 10-s utterances: exactly N tokens (960 samples each), although CosyVoice3's LM may stop before
    min_len (seed 0 stops this text after 5 tokens otherwise)."""
    status, body, _ = post(server.url, CV3, "Hello there.", 0, stream=True, fixed_speech_tokens="40")
    assert status == 200 and len(body) == 40 * 960 * 2, (status, len(body))


def test_cross_lingual_counts_the_system_text_in_the_length_bound(server, pipelines):
    """CosyVoice3's cross-lingual prompt is its system text, which upstream carries in the target text: the
    sentence's 20x bound counts it. With seed 38 the tiny LM speaks "Hi." (3 tokens) for 73 tokens, past the 60
    that 20x its own tokens would allow."""
    status, body, _ = post(server.url, CV3, "Hi.", 38, mode="cross_lingual")
    assert status == 200, body
    audio = pipelines[CV3].synthesize("Hi.", voice_wav(1), PROMPT_TEXT, seed=38, mode="cross_lingual")
    want = to_int16(np.concatenate(list(audio))).tobytes()
    assert len(want) > 60 * 960 * 2  # the bound matters here
    assert_same_audio(body, want)


def test_bistream_equals_the_pipeline(server, pipelines):
    """Text in pieces to CosyVoice3 (its prompt text through <|endofprompt|> right after sos). Its length is
    bounded by max_speech_tokens alone: the CPU pool must hold such a stream (it held 8 pages: 413 too_large)."""
    pieces, seed = ["Text that ", "arrives in ", "four ", "pieces."], 13
    got = asyncio.run(bistream(server.url, pieces, voice_wav(5), seed, tts_model_name=CV3))
    want = pipelines[CV3].synthesize_bistream(iter(pieces), voice_wav(5), PROMPT_TEXT, seed=seed)
    assert_same_audio(got, to_int16(np.concatenate(list(want))).tobytes())


def upload(url: str, voice: int, model: str | None = None) -> httpx.Response:
    data = {"name": f"v{voice}", "text": PROMPT_TEXT, **({"model": model} if model else {})}
    return httpx.post(
        f"{url}/v1/audio/voices", data=data, files={"audio": ("v.wav", voice_wav(voice), "audio/wav")}, timeout=60
    )


def test_saved_voices_per_model(server, pipelines):
    """A voice saved with a model (`model` in the upload) keeps that model's frontend's features: requests to that
    model use them (source="saved"); the other family computes its own from the stored audio. Over the form, the
    OpenAI speech endpoint and the OpenAI text-in WebSocket."""
    r = upload(server.url, 7, "nope")
    message = r.json()["error"]["message"]  # OpenAI's error object (/v1)
    assert r.status_code == 404 and f"'{CV3}'" in message and f"'{CV2}'" in message
    cv2_voice, cv3_voice = upload(server.url, 4, CV2), upload(server.url, 6)  # the second: the default model's
    assert cv2_voice.status_code == 201 and cv3_voice.status_code == 201, (cv2_voice.text, cv3_voice.text)
    cv2_voice, cv3_voice = cv2_voice.json()["id"], cv3_voice.json()["id"]

    before = server.metrics()
    status, body, _ = post(server.url, CV2, "Hello there.", 8, voice_id=cv2_voice)
    assert status == 200 and server.metrics()[SAVED] == before.get(SAVED, 0) + 1  # the features saved with cv2
    assert_same_audio(body, reference_pcm(pipelines[CV2], "Hello there.", voice_wav(4), 8))

    before = server.metrics()
    r = httpx.post(
        f"{server.url}/v1/audio/speech",
        timeout=120,
        json={"model": CV3, "input": LONG_TEXT, "voice": cv2_voice, "response_format": "pcm", "seed": LONG_SEED},
    )
    assert r.status_code == 200, r.text
    after = server.metrics()
    assert after[SAVED] == before[SAVED] and after[COMPUTED] == before[COMPUTED] + 1  # cv3's own, from the audio
    assert_same_audio(r.content, reference_pcm(pipelines[CV3], LONG_TEXT, voice_wav(4), LONG_SEED, stream=True))

    async def speech_ws() -> bytes:
        frames = [
            {
                "type": "session.config",
                "model": CV3,
                "voice": cv3_voice,
                "response_format": "pcm",
                "stream_audio": True,
                "seed": 3,
            },
            {"type": "input.text", "text": "Hello "},
            {"type": "input.text", "text": "there."},
            {"type": "input.done"},
            {"type": "session.close"},
        ]
        audio = bytearray()
        async with websockets.connect(f"{server.url.replace('http', 'ws')}/v1/audio/speech/stream") as ws:
            for frame in frames:
                await ws.send(json.dumps(frame))
            async for message in ws:
                if isinstance(message, bytes):
                    audio += message
                else:
                    assert json.loads(message)["type"] in ("audio.start", "audio.done", "session.done"), message
            assert ws.close_code == 1000
        return bytes(audio)

    before = server.metrics()
    got = asyncio.run(speech_ws())
    assert server.metrics()[SAVED] == before[SAVED] + 1  # saved with the default model, CosyVoice3
    assert_same_audio(got, reference_pcm(pipelines[CV3], "Hello there.", voice_wav(6), 3, stream=True))
