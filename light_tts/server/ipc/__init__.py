"""How processes talk: shared memory (request slots `shm.py`, audio rings, the voice cache, the process table),
every wire message as a typed msgspec struct (`io_struct.py`), and the ZMQ channels that carry them
(`channels.py`). Each shared-memory layout has one owner class that both writer and reader use.

Imports `runtime` (names, sizes) and the core modules; never `workers`, `api` or `launch`.
"""
