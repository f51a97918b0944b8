"""The server: processes and their plumbing, laid out by role (imports point down this list, see
`test/test_layering.py`):

- `runtime/`: the one ServerConfig (flags), the settings every process derives from it, the model set,
  placement and topology (which process runs where, every ZMQ endpoint and shared-memory name). Facts, no loops.
- `ipc/`: shared memory (request slots, audio rings, the voice cache, the process table), the typed wire
  messages (`io_struct.py`) and the ZMQ channels that carry them.
- `metrics/`: Prometheus metrics and the playback model behind the stall metrics.
- `workers/`: the encode, LLM and decode processes, one class with one loop each.
- `api/`: the HTTP worker: FastAPI routes (LightTTS, OpenAI in `api/openai/`, WebSockets), request parsing,
  audio encoding, saved voices, API keys, the playground.
- `launch/`: the launcher that starts every process, and the supervisor that restarts or stops them.
- `api_server.py`: the command, `python -m light_tts.server.api_server`.
"""
