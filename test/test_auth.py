"""API keys through a real uvicorn: each endpoint class with no key, a wrong key and the right key; WebSockets
by header and by subprotocol; the probes open; keys never in the logs."""

import asyncio
import logging

import httpx
import pytest
import websockets
from asgi_thread import serving
from fastapi import FastAPI, WebSocket

from light_tts.server.api.boundary.auth import ApiKeyMiddleware, install_log_redaction
from light_tts.server.runtime.auth_keys import WS_KEY_PROTOCOL, AuthSettings, read_api_key_file

KEYS = ("key-one-aaaaaaaa", "key-two-bbbbbbbb", "key-three-cccccc")
WRONG = "sk-WRONG-do-not-log-me-91234"


def make_app(settings: AuthSettings):
    app = FastAPI()

    @app.get("/liveness")
    @app.get("/readiness")
    @app.get("/healthz")
    @app.get("/metrics")
    @app.get("/v1/models")
    async def ok():
        return {"status": "ok"}

    @app.post("/v1/audio/speech")
    async def speech():
        return {"status": "spoken"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol="chat" if "chat" in offered else None)
        await websocket.send_json(
            {"subprotocols": offered, "protocol_header": websocket.headers.get("sec-websocket-protocol")}
        )
        await websocket.close()

    return ApiKeyMiddleware(app, settings)


@pytest.fixture(scope="module")
def url():
    with serving(make_app(AuthSettings(KEYS)), log_level="debug") as base:
        yield base


def bearer(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


def http_call(url, path, key):
    method = "POST" if path == "/v1/audio/speech" else "GET"
    return httpx.request(method, url + path, headers=bearer(key), json={} if method == "POST" else None)


async def ws_call(url, key=None, subprotocols=None):
    async with websockets.connect(
        url.replace("http", "ws") + "/ws", additional_headers=bearer(key), subprotocols=subprotocols
    ) as conn:
        return conn.subprotocol, await conn.recv()


@pytest.mark.parametrize("path", ["/v1/models", "/v1/audio/speech", "/metrics"])
def test_http_endpoints_need_a_known_key(url, path):
    for key, challenge in ((None, "Bearer"), (WRONG, 'Bearer error="invalid_token"')):
        r = http_call(url, path, key)
        assert r.status_code == 401 and r.headers["www-authenticate"] == challenge
        if path.startswith("/v1/"):  # OpenAI's shape, which its clients read as AuthenticationError
            error = r.json()["error"]
            assert (error["type"], error["code"]) == ("authentication_error", "unauthorized")
            assert "Authorization: Bearer" in error["message"]
        else:
            assert r.json()["kind"] == "unauthorized" and "Authorization: Bearer" in r.json()["error"]
    for key in KEYS:  # every configured key works
        assert http_call(url, path, key).status_code == 200
    assert httpx.get(url + path, headers={"Authorization": f"Basic {KEYS[0]}"}).status_code == 401


@pytest.mark.parametrize("path", ["/liveness", "/readiness", "/healthz"])
def test_probes_are_open(url, path):
    assert httpx.get(url + path).status_code == 200


def test_websocket_needs_a_known_key(url):
    for key in (None, WRONG):
        with pytest.raises(websockets.InvalidStatus) as e:
            asyncio.run(ws_call(url, key))
        assert e.value.response.status_code == 401 and b"unauthorized" in e.value.response.body
    with pytest.raises(websockets.InvalidStatus):
        asyncio.run(ws_call(url, subprotocols=[WS_KEY_PROTOCOL + WRONG]))
    protocol, message = asyncio.run(ws_call(url, KEYS[1]))
    assert protocol is None and '"subprotocols":[]' in message


def test_websocket_key_as_subprotocol_is_hidden_from_the_endpoint(url):
    """The browser way: the server answers with the key's subprotocol, the endpoint never sees the key."""
    protocol, message = asyncio.run(ws_call(url, subprotocols=[WS_KEY_PROTOCOL + KEYS[0]]))
    assert protocol == WS_KEY_PROTOCOL + KEYS[0]
    assert '"subprotocols":[]' in message and KEYS[0] not in message
    protocol, message = asyncio.run(ws_call(url, subprotocols=["chat", WS_KEY_PROTOCOL + KEYS[0]]))
    assert protocol == "chat"  # the endpoint's own choice wins
    assert '"subprotocols":["chat"]' in message and '"protocol_header":"chat"' in message


def test_keys_never_reach_the_logs(url, caplog, capfd):
    """At debug level the WebSocket layer logs handshake headers (the client's too: it runs in this process);
    the redaction the server installs at startup takes the keys out of every line."""
    undo = install_log_redaction(AuthSettings(KEYS))
    with caplog.at_level(logging.DEBUG):
        http_call(url, "/v1/models", WRONG)
        http_call(url, "/v1/models", KEYS[0])
        for attempt in ({"key": WRONG}, {"subprotocols": [WS_KEY_PROTOCOL + WRONG]}):
            with pytest.raises(websockets.InvalidStatus):
                asyncio.run(ws_call(url, **attempt))
        asyncio.run(ws_call(url, subprotocols=[WS_KEY_PROTOCOL + KEYS[2]]))
        logging.getLogger("test").info("a key in the text: %s", KEYS[1])
    undo()
    logged = caplog.text + "".join(capfd.readouterr())
    assert "refused: invalid API key" in logged and "Bearer [redacted]" in logged  # the events are logged...
    assert WRONG not in logged and not any(k in logged for k in KEYS)  # ...without the keys


def test_metrics_public_opens_only_metrics():
    with serving(make_app(AuthSettings(KEYS, metrics_public=True))) as base:
        assert httpx.get(base + "/metrics").status_code == 200
        assert httpx.get(base + "/v1/models").status_code == 401


def test_without_keys_everything_is_open():
    settings = AuthSettings.from_values(metrics_public=True)
    assert not settings.is_enabled and "--metrics_public is ignored" in " ".join(settings.startup_notes())
    with serving(make_app(settings)) as base:
        assert httpx.get(base + "/v1/models").status_code == 200


def test_key_file_and_flags(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# team keys\n\n  {KEYS[0]}  \n{KEYS[1]}\n# {KEYS[2]}\n")
    assert read_api_key_file(str(path)) == list(KEYS[:2])
    settings = AuthSettings.from_values(api_key=(KEYS[1], KEYS[2]), api_key_file=str(path))
    assert settings.api_keys == (KEYS[1], KEYS[2], KEYS[0]) and settings.is_enabled
    assert KEYS[0] not in " ".join(settings.startup_notes())

    path.write_text("# nothing here\n")
    with pytest.raises(ValueError, match="holds no keys"):
        read_api_key_file(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        read_api_key_file(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="visible ASCII") as e:
        AuthSettings.from_values(api_key=["bad key-secret"])
    assert "secret" not in str(e.value)
