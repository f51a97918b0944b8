"""The HTTP worker: the FastAPI app (`app.py`), the manager that turns requests into slots and messages
(`http_manager.py`), the LightTTS routes and bistream WebSocket, request parsing and limits, audio encoding,
saved voices (`voice_store.py`, SQLite), API keys, the OpenAPI docs and the playground (`static/`). The
OpenAI-compatible API and the text-in WebSockets are in `openai/`.

Runs no model: imports `runtime`, `ipc` and `metrics` (and never torch). Never imports `workers` or `launch`.
"""
