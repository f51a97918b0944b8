"""HiFT of a decode step's chunks (mel -> audio): passes by chunk shape with a row-by-row retry (`hift_stage.py`),
per-request streaming states stacked into a batch and back (`hift_batch.py`), CUDA graphs of the steady chunk
shape (`hift_graph.py`). The vocoder itself is each family's, in `models/<family>/hift/`."""
