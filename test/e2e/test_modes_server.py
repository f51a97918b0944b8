"""Every mode through every entry point of the real (shared) server, each equal to the offline pipeline run in that
mode: instructions through the official `openai` client (HTTP and SSE), the LightTTS form, the bistream and the
vLLM-Omni WebSockets; a voice saved without a transcript (cross-lingual); voice conversion of a 3-s source; a
control tag that reaches the LLM as its one token id while `See [1]` stays text; no mode computes a saved voice's
features again."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave

import httpx
import numpy as np
import openai
import pytest
import websockets
from openai_harness import openai_error
from server_harness import assert_same_audio, voice_wav
from test_synthesis import bistream

from light_tts.decode.engine import to_int16

TRANSCRIPT = "A short prompt."
INSTRUCTION = "Speak slowly and softly."
TEXT = "Hi [laughter]. See [1]."  # a control tag, and text that only looks like one
SEED, FIXED = 21, 30  # every utterance here: 30 speech tokens (1.2 s) per sentence, seeded
VOICE_WAV = voice_wav(7)


def pcm_of(chunks) -> bytes:
    return to_int16(np.concatenate(list(chunks))).tobytes()


def upload(url: str, name: str, text: str | None = TRANSCRIPT) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/voices",
        files={"audio": ("v.wav", VOICE_WAV, "audio/wav")},
        data={"name": name} | ({} if text is None else {"text": text}),
        timeout=120,
    )


@pytest.fixture(scope="module")
def voice(server):
    r = upload(server.url, "modes voice")
    assert r.status_code == 201, r.text
    yield r.json()["id"]
    httpx.delete(f"{server.url}/v1/audio/voices/{r.json()['id']}")  # the shared server's voices are others' too


@pytest.fixture(scope="module")
def instruct_reference(pipeline) -> bytes:
    """The offline instruct path, streamed (as /v1/audio/speech and the WebSockets stream at speed 1)."""
    return pcm_of(
        pipeline.synthesize(
            TEXT, VOICE_WAV, TRANSCRIPT, stream=True, seed=SEED, instruction=INSTRUCTION, fixed_speech_tokens=FIXED
        )
    )


def prompt_features(server) -> dict[str, float]:
    m = server.metrics()
    return {s: m.get(("lighttts_prompt_features_total", (("source", s),)), 0.0) for s in ("computed", "saved")}


def test_openai_client_instructions_over_http_and_sse(server, pipeline, voice, instruct_reference):
    """`instructions=` of the official client is instruct mode, over plain HTTP and SSE; the tag is one text token
    (usage.input_tokens counts it once) and `See [1]` is read as text; the saved voice's features serve it."""
    before = prompt_features(server)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0, timeout=120) as client:
        pcm = client.audio.speech.create(
            model="tts-1",
            voice=voice,
            input=TEXT,
            instructions=INSTRUCTION,
            response_format="pcm",
            extra_body={"seed": SEED, "fixed_speech_tokens": FIXED},
        )
        assert_same_audio(pcm.content, instruct_reference)
        with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice=voice,
            input=TEXT,
            instructions=INSTRUCTION,
            response_format="pcm",
            stream_format="sse",
            extra_body={"seed": SEED, "fixed_speech_tokens": FIXED},
        ) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert_same_audio(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), instruct_reference)
    frontend = pipeline.frontend
    text_ids = [i for s in frontend.normalize_and_split(TEXT) for i in frontend.tokenize(s)]
    assert text_ids.count(frontend.tokenizer.token_id("[laughter]")) == 1
    assert {frontend.tokenizer.token_id(t) for t in frontend.control_tags} & set(text_ids) == {
        frontend.tokenizer.token_id("[laughter]")
    }  # "[1]" is no tag
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == len(text_ids)
    after = prompt_features(server)
    assert after["saved"] - before["saved"] == 2 and after["computed"] == before["computed"]


def test_vllm_omni_websocket_session_config_instructions(server, voice, instruct_reference):
    async def session() -> bytes:
        audio = b""
        async with websockets.connect(server.url.replace("http", "ws") + "/v1/audio/speech/stream") as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "session.config",
                        "voice": voice,
                        "instructions": INSTRUCTION,
                        "response_format": "pcm",
                        "stream_audio": True,
                        "seed": SEED,
                        "fixed_speech_tokens": FIXED,
                    }
                )
            )
            for message in ({"type": "input.text", "text": TEXT}, {"type": "input.done"}, {"type": "session.close"}):
                await ws.send(json.dumps(message))
            async for message in ws:
                if isinstance(message, bytes):
                    audio += message
                else:
                    assert json.loads(message)["type"] != "error", message
        return audio

    assert_same_audio(asyncio.run(session()), instruct_reference)


def test_a_voice_saved_without_a_transcript_speaks_cross_lingual(server, pipeline):
    r = upload(server.url, "no transcript", text=None)
    assert r.status_code == 201 and r.json()["text"] is None, r.text
    voice = r.json()["id"]
    try:
        assert httpx.get(f"{server.url}/v1/audio/voices/{voice}").json()["text"] is None
        body = {
            "model": "tts-1",
            "voice": voice,
            "input": "Hello.",
            "response_format": "pcm",
            "seed": SEED,
            "fixed_speech_tokens": FIXED,
        }
        r = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=120)
        assert r.status_code == 200, r.text
        want = pipeline.synthesize("Hello.", VOICE_WAV, None, stream=True, seed=SEED, fixed_speech_tokens=FIXED)
        assert_same_audio(r.content, pcm_of(want))
        r = httpx.post(f"{server.url}/v1/audio/speech", json={**body, "mode": "zero_shot"}, timeout=120)
        assert r.status_code == 400 and "needs the voice's transcript" in openai_error(r)[1]
    finally:
        httpx.delete(f"{server.url}/v1/audio/voices/{voice}")
    r = upload(server.url, "blank", text="  ")
    assert r.status_code == 400 and "leave the field out" in openai_error(r)[1]


@pytest.mark.parametrize(
    "fields, offline",
    [
        (
            {"instruct_text": INSTRUCTION, "prompt_text": TRANSCRIPT},
            dict(prompt_text=TRANSCRIPT, instruction=INSTRUCTION),
        ),
        ({}, dict(prompt_text=None)),  # a prompt upload without its transcript
        ({"prompt_text": TRANSCRIPT, "mode": "cross_lingual"}, dict(prompt_text=TRANSCRIPT, mode="cross_lingual")),
    ],
    ids=["instruct", "no transcript", "forced cross_lingual"],
)
def test_the_lighttts_form_in_every_mode(server, pipeline, fields, offline):
    data = {"tts_text": TEXT, "seed": str(SEED), "fixed_speech_tokens": str(FIXED), "stream": "false", **fields}
    r = httpx.post(
        f"{server.url}/inference_zero_shot", data=data, files={"prompt_wav": ("p.wav", VOICE_WAV)}, timeout=120
    )
    assert r.status_code == 200, r.text
    assert_same_audio(
        r.content, pcm_of(pipeline.synthesize(TEXT, VOICE_WAV, seed=SEED, fixed_speech_tokens=FIXED, **offline))
    )


def test_bistream_instruct_with_a_tag_cut_between_pieces(server, pipeline):
    pieces = ["Hi [lau", "ghter] you."]
    start = {"instruct_text": INSTRUCTION, "seed": SEED}  # and no transcript: fine in instruct mode
    audio = asyncio.run(bistream(server.url, pieces, VOICE_WAV, SEED, start))
    want = pipeline.synthesize_bistream(iter(pieces), VOICE_WAV, None, seed=SEED, instruction=INSTRUCTION)
    assert_same_audio(audio, pcm_of(want))


def test_voice_conversion_of_a_3s_source(server, pipeline, voice):
    """3 s in, 3 s out in the target's voice, equal to the offline vc path: whole (a WAV file, saved voice) and
    streamed (PCM, an uploaded target); no model runs again for the saved voice."""
    source = voice_wav(11, seconds=3.0)
    before = prompt_features(server)
    r = httpx.post(
        f"{server.url}/v1/audio/voice-conversion",
        data={"voice": voice, "response_format": "wav", "seed": str(SEED)},
        files={"audio": ("s.wav", source)},
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
    with wave.open(io.BytesIO(r.content)) as w:
        assert (w.getframerate(), w.getnframes()) == (24000, 3 * 24000)
        whole = w.readframes(w.getnframes())
    assert_same_audio(whole, pcm_of(pipeline.voice_conversion(source, VOICE_WAV, seed=SEED)))
    assert prompt_features(server)["computed"] == before["computed"]
    with httpx.stream(
        "POST",
        f"{server.url}/v1/audio/voice-conversion",
        timeout=120,
        data={"response_format": "pcm", "stream": "true", "seed": str(SEED)},
        files={"audio": ("s.wav", source), "prompt_audio": ("p.wav", VOICE_WAV)},
    ) as r:
        assert r.status_code == 200
        chunks = [c for c in r.iter_raw() if c]
    assert len(chunks) > 1
    assert_same_audio(b"".join(chunks), pcm_of(pipeline.voice_conversion(source, VOICE_WAV, stream=True, seed=SEED)))


def test_voice_conversion_refuses_what_it_cannot_do(server, voice):
    def post(data, files):
        return httpx.post(f"{server.url}/v1/audio/voice-conversion", data=data, files=files, timeout=120)

    long_source = voice_wav(12, seconds=31.0, rate=8000)
    r = post({"voice": voice}, {"audio": ("s.wav", long_source)})
    assert r.status_code == 413 and openai_error(r)[0] == "too_large" and "30 s" in openai_error(r)[1]
    source = {"audio": ("s.wav", voice_wav(12, seconds=1.0))}
    assert post({}, source).status_code == 400  # no target voice
    assert post({"voice": voice}, {**source, "prompt_audio": ("p.wav", VOICE_WAV)}).status_code == 400  # two
    assert post({"voice": "voice_missing"}, source).status_code == 404
    assert post({"voice": voice, "response_format": "ogg"}, source).status_code == 400
    assert post({"voice": voice, "stream": "true", "speed": "1.5"}, source).status_code == 400
    server.wait_slots_free(30.0)


def test_metrics_carry_the_mode(server):
    m = server.metrics()
    for mode in ("instruct", "cross_lingual", "vc"):
        assert any(
            name == "lighttts_requests_total" and dict(labels).get("mode") == mode and dict(labels)["outcome"] == "ok"
            for (name, labels), v in m.items()
            if v > 0
        ), mode
        assert any(
            name == "lighttts_time_to_first_audio_seconds_count" and dict(labels).get("mode") == mode
            for (name, labels), v in m.items()
            if v > 0
        ), mode


def test_openapi_describes_modes_tags_and_voice_conversion(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "`[laughter]`" in spec["info"]["description"] and "instruct" in spec["info"]["description"]
    form = spec["paths"]["/inference_zero_shot"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"instruct_text", "mode"} <= set(form["properties"]) and "[breath]" in form["properties"]["tts_text"][
        "description"
    ]
    vc = spec["paths"]["/v1/audio/voice-conversion"]["post"]
    assert {"audio", "voice", "prompt_audio"} <= set(
        vc["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    )
    assert "instructions" in spec["components"]["schemas"]["SpeechRequest"]["properties"]
