"""The decode engines of the server's decode process: speech tokens of many requests -> 24 kHz audio.

At the top, what every family's engine shares: the engine (`engine.py`, with its admission side
`engine_admission.py`, GPU setup `engine_setup.py`, per-request state `request.py`, step times `step_timer.py`)
and its pure-CPU policy (`scheduler.py`, `admission.py`, `page_pool.py`). Below it, by part: `flow/` CosyVoice2's
paged flow, `hift/` HiFT of a step's chunks, `dit/` CosyVoice3's engine over its DiT flow, `snac/` Orpheus's
engine over SNAC windows.

Imports the core modules, `kernels`, `models`, `frontend` and `token2wav`; never `llm`, `families` or the server.
"""
