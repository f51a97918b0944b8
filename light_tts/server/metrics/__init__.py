"""Observability: the Prometheus metrics every process updates (`prometheus.py`) and the real-time listener model
that turns chunk arrival times into stall metrics (`playback.py`). Imports `ipc` (the process table) only."""
