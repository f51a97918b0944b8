"""Orpheus's decode engine: token ids -> frames -> SNAC windows -> audio, the windows of all streams decoded in one
batch per step (`snac_engine.py`) through a CUDA graph per row bucket (`snac_runner.py`)."""
