"""The HTTP worker: the FastAPI app (`app.py`), the manager that turns requests into slots and messages
(`http_manager.py`), the LightTTS routes and bistream WebSocket, request parsing, audio encoding and the
playground (`static/`). Below it: `boundary/` (API keys, the body bound and deadline, the disconnect watch, error
bodies), `voices/` (saved voices in SQLite, aliases), `pages/` (OpenAPI descriptions, offline docs). The
OpenAI-compatible API and the text-in WebSockets are in `openai/`.

Runs no model: imports `runtime`, `ipc` and `metrics` (and never torch). Never imports `workers` or `launch`.
"""
