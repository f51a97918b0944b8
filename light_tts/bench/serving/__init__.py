"""What the whole-server benchmarks (`streams`, `soak`, `pressure`, `server`, `prompt_models`) share: the real
server started in a subprocess and a synthetic voice (`local_server.py`), the load generator (`stream_client.py`),
the listener model (`player.py`), scoring and the per-stage table (`stream_stats.py`, `stage_table.py`), the PNG
(`stream_plot.py`), saved voices and /metrics counters (`server_api.py`), the pressure mixes and their verdict
(`pressure_mix.py`). Talks to a server over HTTP only."""
