"""Fuzzing, bounded for CI: schemathesis generates requests for every endpoint of /openapi.json (a few dozen
examples each) and the bistream WebSocket gets random message sequences; nothing answers 5xx, nothing closes with
1011, and no slot is left behind."""

from __future__ import annotations

import asyncio
import json

import httpx
import hypothesis
import schemathesis
import websockets
from hypothesis import HealthCheck
from hypothesis import strategies as st
from server_harness import voice_wav

MAX_EXAMPLES = 25  # per operation


def bounded_schema(server) -> dict:
    """The server's own schema, with text lengths and fixed_speech_tokens capped so that an example that happens
    to be valid stays cheap on a CPU (random bytes never make a valid prompt wav anyway)."""
    spec = httpx.get(f"{server.url}/openapi.json").json()
    form = spec["paths"]["/inference_zero_shot"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    for name in ("tts_text", "prompt_text"):
        form["properties"][name]["maxLength"] = 60
    form["properties"]["fixed_speech_tokens"]["maximum"] = 5
    return spec


def test_no_endpoint_answers_5xx_to_generated_requests(server):
    schema = schemathesis.openapi.from_dict(bounded_schema(server))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    statuses: dict[str, set[int]] = {}

    def check(operation):
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            response = case.call(base_url=server.url, timeout=60)
            statuses.setdefault(f"{operation.method.upper()} {operation.path}", set()).add(response.status_code)
            assert response.status_code < 500 or (operation.path == "/health" and response.status_code == 503), (
                case.as_curl_command(),
                response.status_code,
                response.text[:300],
            )

        call()

    for operation in operations:
        check(operation)
    assert any(s >= 400 for s in statuses["POST /inference_zero_shot"])
    server.wait_slots_free(5.0)
    assert httpx.get(f"{server.url}/readiness").status_code == 200


MESSAGES = st.one_of(
    st.binary(max_size=64),
    st.just(voice_wav(5)),
    st.text(max_size=40),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(
                ["prompt_text", "tts_text", "finish", "seed", "fixed_speech_tokens", "tts_model_name", "x"]
            ),
            st.one_of(
                st.text(max_size=20),
                st.integers(-5, 50),
                st.just(10**20),
                st.booleans(),
                st.none(),
                st.lists(st.integers(), max_size=3),
            ),
            max_size=4,
        ),
    ),
)


@hypothesis.given(messages=st.lists(MESSAGES, max_size=6))
@hypothesis.settings(
    max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
def test_websocket_message_fuzz_never_closes_with_an_internal_error(server, messages):
    code = asyncio.run(bistream_session(server, messages))
    assert code in (1000, 1003, 1008, 1013, None), (messages, code)


async def bistream_session(server, messages) -> int | None:
    async with websockets.connect(f"{server.url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:
        try:
            for message in messages:
                await ws.send(message)
            await ws.send(json.dumps({"finish": True}))
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
    return ws.close_code
