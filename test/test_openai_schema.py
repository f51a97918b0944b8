"""The OpenAI speech request as validated by FastAPI with our handler: every bad field is a 400 in OpenAI's error
shape (the same failure on a LightTTS route keeps ours); SSE events parse back; the request accepts every
parameter the official client can send."""

import base64
import json

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from openai.types.audio.speech_create_params import SpeechCreateParams

from light_tts.errors import OverloadedError
from light_tts.server.api.openai.schema import (
    SpeechRequest,
    SpeechUsage,
    audio_delta_event,
    audio_done_event,
    error_event,
    validation_error_handler,
)

VALID = {"model": "tts-1", "input": "Hello.", "voice": "voice_abc"}


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, validation_error_handler)

    @app.post("/v1/audio/speech")
    async def speech(request: SpeechRequest):
        return request.model_dump()

    @app.post("/lighttts_route")
    async def ours(request: SpeechRequest):
        return request.model_dump()

    return TestClient(app)


def test_defaults_and_voice_forms(client):
    r = client.post("/v1/audio/speech", json=VALID)
    assert r.status_code == 200
    assert r.json() == {
        **VALID,
        "response_format": "mp3",
        "speed": 1.0,
        "stream_format": "audio",
        "instructions": None,
        "mode": None,
        "fixed_speech_tokens": None,
        "seed": None,
        "stream": None,
    }
    r = client.post(
        "/v1/audio/speech",
        json={
            **VALID,
            "voice": {"id": "voice_xyz"},
            "instructions": " ",
            "speed": 4,
            "seed": 7,
            "fixed_speech_tokens": 50,
        },
    )
    assert r.status_code == 200 and r.json()["voice"] == "voice_xyz" and r.json()["speed"] == 4.0
    r = client.post("/v1/audio/speech", json={**VALID, "instructions": "Speak cheerfully.", "mode": "instruct"})
    assert r.status_code == 200 and r.json()["instructions"] == "Speak cheerfully."
    r = client.post("/v1/audio/speech", json={**VALID, "mode": "cross_lingual"})
    assert r.status_code == 200 and r.json()["mode"] == "cross_lingual"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"speed": 0.2}, "speed: Input should be greater than or equal to 0.25"),
        ({"speed": 4.5}, "speed: Input should be less than or equal to 4"),
        ({"speed": "1.5"}, "speed: Input should be a valid number"),
        ({"response_format": "ogg"}, "response_format: Input should be 'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'"),
        ({"stream_format": "chunked"}, "stream_format: Input should be 'audio' or 'sse'"),
        ({"input": ""}, "input: String should have at least 1 character"),
        ({"input": " \n "}, "input: input is empty"),
        ({"input": "a" * 4097}, "input: String should have at most 4096 characters"),
        ({"input": "a\x00b"}, "input: input contains a NUL character"),
        ({"instructions": "a" * 4097}, "instructions: String should have at most 4096 characters"),
        ({"instructions": "a\x00b"}, "instructions: contains a NUL character"),
        ({"mode": "instruct"}, "request body: mode instruct needs an instruction"),
        ({"mode": "zero_shot", "instructions": "Speak softly."}, "request body: instructions select mode instruct"),
        ({"mode": "vc"}, "mode: Input should be 'zero_shot', 'instruct' or 'cross_lingual'"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": True}, "seed: Input should be a valid integer"),
        ({"fixed_speech_tokens": 0}, "fixed_speech_tokens: Input should be greater than or equal to 1"),
        ({"voice": {"name": "x"}}, "voice: Input should be a valid string"),
        ({"voice": None}, "voice: Input should be a valid string"),
        ({"voice": ""}, "voice: String should have at least 1 character"),
        ({"temperature": 0.7}, "unknown field 'temperature'"),
        ({"model": None}, "model: Input should be a valid string"),
    ],
)
def test_bad_fields_are_400_in_openais_shape(client, change, expected):
    body = {k: v for k, v in {**VALID, **change}.items()}
    r = client.post("/v1/audio/speech", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_request"
    assert error["message"].startswith(expected), error["message"]
    field = expected.partition(":")[0]  # a check across fields (the mode's) is about the request body: no param
    assert error["param"] == (
        expected.split("'")[1] if expected.startswith("unknown") else None if field == "request body" else field
    )
    r = client.post("/lighttts_route", json=body)  # the same failure on a LightTTS route: our shape
    assert r.status_code == 400 and r.json() == {"error": error["message"], "kind": "bad_request"}


def test_wav_and_flac_come_whole_unless_streamed_and_streaming_needs_speed_one():
    def streamed(**change) -> bool:
        return SpeechRequest.model_validate({**VALID, **change}).is_streamed()

    assert [streamed(response_format=f) for f in ("mp3", "opus", "aac", "pcm", "wav", "flac")] == [True] * 4 + [
        False
    ] * 2
    assert streamed(response_format="wav", stream=True) and not streamed(response_format="mp3", stream=False)
    assert not streamed(speed=1.5) and streamed(stream_format="sse", response_format="wav")
    assert streamed(stream_format="sse", speed=2.0)  # SSE events carry whatever audio there is
    for bad in ({"stream": True, "speed": 2.0}, {"stream": False, "stream_format": "sse"}):
        with pytest.raises(ValueError):
            SpeechRequest.model_validate({**VALID, **bad})


def test_missing_fields_and_broken_json(client):
    def message(r):
        assert r.status_code == 400
        return r.json()["error"]["message"]

    assert message(client.post("/v1/audio/speech", json={"model": "tts-1"})) == (
        "input: Field required; voice: Field required"
    )
    assert message(
        client.post("/v1/audio/speech", content=b'{"model": ', headers={"content-type": "application/json"})
    ).startswith("request body is not valid JSON")
    assert message(client.post("/v1/audio/speech")) == "request body: Field required"


def test_every_official_client_parameter_is_a_field():
    assert set(SpeechCreateParams.__annotations__) <= set(SpeechRequest.model_fields)


def parse_sse(data: bytes) -> dict:
    assert data.startswith(b"data: ") and data.endswith(b"\n\n") and data.count(b"\n") == 2
    return json.loads(data[len(b"data: ") :])


def test_sse_events():
    delta = parse_sse(audio_delta_event(b"\x00\xffID3"))
    assert delta == {"type": "speech.audio.delta", "audio": base64.b64encode(b"\x00\xffID3").decode()}
    done = parse_sse(audio_done_event(SpeechUsage.of(12, 100)))
    assert done == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": 12, "output_tokens": 100, "total_tokens": 112},
    }
    assert parse_sse(error_event(OverloadedError("busy"))) == {
        "type": "error",
        "error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "overloaded"},
    }
    # an unexpected exception's text stays in the server log
    assert parse_sse(error_event(KeyError("/srv/secret/path"))) == {
        "type": "error",
        "error": {"message": "internal error", "type": "server_error", "param": None, "code": "internal"},
    }
