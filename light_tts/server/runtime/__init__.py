"""Startup facts, computed once in the launcher and handed to every process: `ServerConfig` (every flag, one
dataclass), `ServerSettings` (what each process derives from it and the model), the model set, device lists,
placement (which GPU runs which process) and topology (every endpoint and shared-memory name).

Pure data and arithmetic: no sockets, no shared memory, no loops. Imports only the core modules and the engines'
sizing helpers, never `ipc`, `workers`, `api` or `launch`.
"""
