"""The OpenAI-compatible speech endpoint and both text-in WebSockets on the real server (tiny model, API keys,
debug log level), driven by the official `openai` package, httpx and `websockets`; every format decoded by
independent decoders (PyAV, and Debian's ffprobe/ffmpeg when installed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import signal
import wave

import av
import httpx
import numpy as np
import pytest
import soundfile
import websockets
from openai_harness import (
    AUTH,
    CONTENT_TYPES,
    EXTRA,
    FORMATS,
    LONG_TOKENS,
    MAX_AUDIO_SECONDS,
    MAX_TEXT_CHARS,
    RATE,
    SAMPLES_PER_TOKEN,
    SEED,
    TEXT,
    TOKENS,
    Server,
    assert_same_audio,
    client,
    decode_with_ffmpeg,
    decode_with_pyav,
    event_error,
    reference_pcm,
    stream_session,
    upload,
    voice,
)
from server_harness import outcomes, voice_wav

from light_tts.bench.serving.stage_table import parse_server_timing
from light_tts.server.ipc.stage_trace import STAGES

__all__ = ["client", "reference_pcm", "voice"]  # fixtures, used by name


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = Server(tiny_model_dir, tmp_path_factory, num_http_workers=1)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_client_speaks_every_format(client, voice, reference_pcm, fmt):
    """Each format decodes (PyAV; ffprobe + ffmpeg too) to the rate and length of the pcm of the same request and
    seed; the lossless ones to the very same samples."""
    response = client.audio.speech.create(model="tts-1", voice=voice, input=TEXT, response_format=fmt, extra_body=EXTRA)
    assert response.response.headers["content-type"] == CONTENT_TYPES[fmt]
    data, seconds = response.content, len(reference_pcm) / RATE
    if fmt == "pcm":
        assert_same_audio(np.frombuffer(data, "<i2"), reference_pcm)
        return
    decoders = [("pyav", *decode_with_pyav(data))]
    if shutil.which("ffprobe") and shutil.which("ffmpeg"):
        codec, rate, num = decode_with_ffmpeg(data)
        assert codec == {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "pcm_s16le"}[fmt]
        decoders.append(("ffmpeg", rate, np.zeros(num)))
    for name, rate, samples in decoders:
        assert rate == (48000 if fmt == "opus" else RATE), name  # Opus decoders always output 48 kHz
        if fmt in ("wav", "flac"):
            assert len(samples) == len(reference_pcm), name
            if name == "pyav":
                assert_same_audio(samples, reference_pcm)
        else:  # a lossy codec pads to whole frames (and its encoder delay), never drops audio
            assert seconds - 0.002 <= len(samples) / rate <= seconds + 0.15, (name, len(samples) / rate)


def flac_streaminfo(data: bytes) -> tuple[int, str]:
    """(total samples, MD5 hex) from a FLAC file's STREAMINFO block (the first metadata block, after "fLaC")."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # block type 0: STREAMINFO
    info = data[8 : 8 + 34]
    return int.from_bytes(info[10:18], "big") & ((1 << 36) - 1), info[18:34].hex()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_whole_files_have_true_lengths_for_every_decoder(client, voice, reference_pcm, fmt):
    """wav and flac come whole by default, any format with stream=false: libsndfile, PyAV and Python's wave read
    the frame count from the headers and decode that many samples; FLAC's STREAMINFO holds the sample count and
    the MD5 of the samples; Content-Length is the file's size."""
    change = {} if fmt in ("wav", "flac") else {"stream": False}
    response = client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format=fmt, extra_body={**EXTRA, **change}
    )
    data, num = response.content, len(reference_pcm)
    assert int(response.response.headers["content-length"]) == len(data)
    info = soundfile.info(io.BytesIO(data))
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert (info.frames, len(samples), rate) == (num, num, RATE), (info, len(samples))
    with av.open(io.BytesIO(data)) as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert decoded == (2 * num if fmt == "opus" else num)  # Opus decoders output 48 kHz
    if fmt == "wav":
        with wave.open(io.BytesIO(data)) as w:
            assert w.getnframes() == num and len(w.readframes(num + 1)) == 2 * num
    if fmt in ("wav", "flac"):
        assert_same_audio(samples, reference_pcm)
    if fmt == "flac":
        assert flac_streaminfo(data) == (num, hashlib.md5(samples.astype("<i2").tobytes()).hexdigest())


def test_streamed_wav_and_flac_keep_the_streaming_form(client, voice, reference_pcm):
    """stream=true sends wav/flac as they are encoded: the length is unknown then, as docs/openai-api.md says
    (WAV sizes 0xFFFFFFFF, FLAC STREAMINFO with 0 samples and no MD5); the samples are the same."""

    def streamed(fmt: str) -> bytes:
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=voice, input=TEXT, response_format=fmt, extra_body={**EXTRA, "stream": True}
        ) as response:
            assert response.headers.get("transfer-encoding") == "chunked"
            return response.read()

    wav = streamed("wav")
    assert wav[4:8] == b"\xff\xff\xff\xff" and wav[-2 * len(reference_pcm) - 4 : -2 * len(reference_pcm)] == (
        b"\xff\xff\xff\xff"
    )
    assert_same_audio(np.frombuffer(wav[-2 * len(reference_pcm) :], "<i2"), reference_pcm)
    flac = streamed("flac")
    assert flac_streaminfo(flac) == (0, "0" * 32)
    assert_same_audio(decode_with_pyav(flac)[1], reference_pcm)


def test_streamed_pcm_arrives_in_chunks_before_the_end(server, client, voice):
    """with_streaming_response: the first bytes arrive while the request is still running (the decode process
    is stopped right then, so the server cannot have finished meanwhile), and the pieces add up to all of it; the
    headers carry the request's stages up to its first audio (Server-Timing)."""
    decode_pid = httpx.get(f"{server.url}/readiness").json()["processes"]["decode0"]["pid"]
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice=voice,
        input=TEXT,
        response_format="pcm",
        extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS},
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        stages = parse_server_timing(response.headers.get("server-timing"))  # the trace up to the first audio
        assert list(stages) == [*STAGES[:-1], "total"] and min(stages.values()) >= 0, stages
        pieces = response.iter_bytes()
        received = [next(pieces)]
        os.kill(decode_pid, signal.SIGSTOP)
        try:
            in_flight = server.metrics()[("lighttts_active_requests", ())]
        finally:
            os.kill(decode_pid, signal.SIGCONT)
        received += [piece for piece in pieces if piece]
    assert in_flight == 1 and len(received) >= 3
    assert len(b"".join(received)) == 2 * LONG_TOKENS * SAMPLES_PER_TOKEN


def test_a_client_that_leaves_ends_its_request(server, client, voice):
    """Over HTTP and WebSocket: the request ends as client_gone (aborted in every stage, its slot freed), not
    run to its end."""
    http_before, ws_before = outcomes(server, "v1_audio_speech"), outcomes(server, "ws_tts")
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice=voice,
        input=TEXT,
        response_format="mp3",
        extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS},
    ) as response:
        next(response.iter_bytes())

    async def leave_mid_utterance():
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/tts", additional_headers=AUTH) as ws:
            # a forced length: a random model's utterance may otherwise end before the client leaves
            await ws.send(json.dumps({"text": TEXT, "voice": voice, "fixed_speech_tokens": LONG_TOKENS}))
            await ws.recv()  # the first audio frame; then hang up

    asyncio.run(leave_mid_utterance())
    server.assert_no_slot_in_use()
    for endpoint, before in (("v1_audio_speech", http_before), ("ws_tts", ws_before)):
        after = outcomes(server, endpoint)
        assert after.get("client_gone", 0) == before.get("client_gone", 0) + 1, endpoint
        assert after.get("ok", 0) == before.get("ok", 0), endpoint


def test_a_failure_after_the_start(server, client, voice):
    """More audio than --max_audio_seconds: SSE ends with an error event (after audio deltas, no done); plain
    audio is cut short, which the client sees as an incomplete body."""
    too_long = {"seed": SEED, "fixed_speech_tokens": 25 * (MAX_AUDIO_SECONDS + 1)}
    response = client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format="opus", stream_format="sse", extra_body=too_long
    )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta" and events[-1]["type"] == "error"
    code, message = event_error(events[-1])
    assert code == "too_large" and "--max_audio_seconds" in message
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            f"{server.url}/v1/audio/speech",
            headers=AUTH,
            timeout=60,
            json={"model": "tts-1", "voice": voice, "input": TEXT, "response_format": "pcm", **too_long},
        ).read()


def test_sse_events_parse(client, voice, reference_pcm):
    response = client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format="pcm", stream_format="sse", extra_body=EXTRA
    )
    assert response.response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert_same_audio(np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in deltas), "<i2"), reference_pcm)
    usage = done["usage"]
    assert done["type"] == "speech.audio.done" and usage["output_tokens"] == TOKENS
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + TOKENS


def test_a_saved_voice_runs_no_speech_tokenizer_or_speaker_model(server, voice):
    """lighttts_prompt_features_total{source}: "computed" counts every run of the two models; a request with a
    saved voice adds to "saved" only, over every entry point that takes one."""
    before = server.prompt_features()
    speech = httpx.post(
        f"{server.url}/v1/audio/speech",
        headers=AUTH,
        timeout=60,
        json={"model": "default", "voice": voice, "input": TEXT, "response_format": "wav", **EXTRA},
    )
    form = httpx.post(
        f"{server.url}/inference_zero_shot",
        headers=AUTH,
        timeout=60,
        data={"tts_text": TEXT, "voice_id": voice, "seed": str(SEED), "fixed_speech_tokens": "10"},
    )
    assert speech.status_code == form.status_code == 200, (speech.text, form.text)
    assert len(form.content) == 2 * 10 * SAMPLES_PER_TOKEN
    bistream = asyncio.run(bistream_with_voice(server.url, voice))
    assert bistream == (2 * 20 * SAMPLES_PER_TOKEN, 1000)
    after = server.prompt_features()
    assert after == {**before, "saved": before["saved"] + 3}

    created = upload(server.url, name="counted", audio=voice_wav(11))  # an upload computes them once
    assert created.status_code == 201, created.text
    assert server.prompt_features() == {**after, "computed": after["computed"] + 1}
    assert httpx.delete(f"{server.url}/v1/audio/voices/{created.json()['id']}", headers=AUTH).status_code == 200


async def bistream_with_voice(url: str, voice: str) -> tuple[int, int]:
    async with websockets.connect(
        url.replace("http", "ws") + "/inference_zero_shot_bistream", additional_headers=AUTH
    ) as ws:
        await ws.send(json.dumps({"voice_id": voice, "fixed_speech_tokens": 20, "seed": SEED}))
        for piece in ("Hello ", "there."):
            await ws.send(json.dumps({"tts_text": piece}))
        await ws.send(json.dumps({"finish": True}))
        num_bytes = sum([len(m) async for m in ws])
    return num_bytes, ws.close_code


def test_openapi_describes_the_new_endpoints(server):
    spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    paths = spec["paths"]
    assert {"/v1/audio/speech", "/v1/audio/voices", "/v1/audio/voices/{voice_id}", "/v1/models"} <= set(paths)
    speech = paths["/v1/audio/speech"]["post"]
    assert set(CONTENT_TYPES.values()) | {"text/event-stream"} <= set(speech["responses"]["200"]["content"])
    for status in ("400", "401", "404", "413", "429", "503"):
        body = speech["responses"][status]["content"]["application/json"]["schema"]
        assert body.get("$ref", "").endswith("/OpenAIErrorBody") or set(body["properties"]) == {"error"}
    assert {
        "model",
        "input",
        "voice",
        "response_format",
        "speed",
        "stream_format",
        "instructions",
        "seed",
        "fixed_speech_tokens",
    } <= set(spec["components"]["schemas"]["SpeechRequest"]["properties"])
    upload_form = paths["/v1/audio/voices"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(upload_form["properties"]) == {"audio", "text", "name", "model"}
    assert paths["/v1/audio/voices/{voice_id}"]["delete"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/VoiceDeleted")
    assert all("422" not in op["responses"] for item in paths.values() for op in item.values())  # 400 instead


# ---- WebSockets


def test_vllm_omni_websocket_two_utterances_on_one_session(server, voice, reference_pcm):
    config = {"type": "session.config", "voice": voice, "response_format": "pcm", "stream_audio": True, **EXTRA}
    frames = [
        config,
        {"type": "input.text", "text": "Hello "},
        {"type": "input.text", "text": "there."},
        {"type": "input.done"},
        {**config, "response_format": "wav", "stream_audio": False},
        {"type": "input.text", "text": TEXT},
        {"type": "input.done"},
        {"type": "session.close"},
    ]
    events, audio, code = asyncio.run(stream_session(server.url, frames))
    assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"] * 2 and code == 1000
    assert events[0] == {
        "type": "audio.start",
        "utterance_index": 0,
        "sentence_index": 0,
        "sentence_text": TEXT,
        "format": "pcm",
        "sample_rate": RATE,
        "channels": 1,
    }
    assert events[3]["utterance_index"] == 1 and events[3]["format"] == "wav"
    pcm, wav = audio[:-1], audio[-1]
    assert_same_audio(np.frombuffer(b"".join(pcm), "<i2"), reference_pcm)  # same text, voice and seed
    assert events[1] == {
        "type": "audio.done",
        "utterance_index": 0,
        "sentence_index": 0,
        "total_bytes": sum(map(len, pcm)),
        "error": False,
    }
    rate, samples = decode_with_pyav(wav)
    assert rate == RATE and len(samples) == len(reference_pcm) and events[4]["total_bytes"] == len(wav)


def test_vllm_omni_websocket_malformed_events(server, voice):
    events, _, code = asyncio.run(stream_session(server.url, ['{"type": "input.text"', {"type": "input.done"}]))
    assert events[0]["type"] == "error" and "not valid JSON" in events[0]["message"] and code == 1008
    events, _, code = asyncio.run(
        stream_session(server.url, [{"type": "session.config", "voice": voice, "response_format": "ogg"}])
    )
    assert "response_format" in events[0]["message"] and code == 1008
    events, _, code = asyncio.run(stream_session(server.url, [{"type": "session.config", "voice": voice, "speed": 9}]))
    assert "speed" in events[0]["message"] and code == 1008
    frames = [
        {"type": "session.config", "voice": voice},
        {"type": "bogus"},
        {"type": "input.text", "text": 5},
        {"type": "input.text", "text": "x" * (MAX_TEXT_CHARS + 1)},
        b"\x00\x01",
    ]
    events, audio, code = asyncio.run(stream_session(server.url, frames))
    assert (
        [e["message"].split(";")[0].split(" (")[0] for e in events]
        == [
            "unknown message type 'bogus'",
            'input.text takes exactly one field, "text", a string',
            f"this piece would make the utterance longer than {MAX_TEXT_CHARS} characters",
            "binary frames are not part of this protocol",
        ]
        and code == 1003
        and audio == []
    )


def test_orpheus_websocket(server, voice, reference_pcm):
    async def session():
        received = []
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/tts", additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"text": TEXT, "voice": voice}))
            await ws.send(json.dumps({"text": ""}))
            await ws.send(json.dumps({"text": "Two."}))  # the voice sticks
            await ws.send("__END__")
            async for message in ws:
                received.append(message)
        return received, ws.close_code

    received, code = asyncio.run(session())
    (error,) = [json.loads(m) for m in received if isinstance(m, str)]
    assert error["message"] == '"text" must be a non-empty string'
    assert event_error(error) == ("bad_request", '"text" must be a non-empty string')
    frames = [m for m in received if isinstance(m, bytes)]
    ends = [k for k, m in enumerate(frames) if m == b"__END__"]
    assert len(ends) == 2 and ends[1] == len(frames) - 1 and code == 1000
    first = np.frombuffer(b"".join(frames[: ends[0]]), "<i2")
    assert len(first) > 0 and len(first) % SAMPLES_PER_TOKEN == 0  # whole tokens of int16 PCM
    assert ends[1] - ends[0] > 1  # the second utterance has audio too
