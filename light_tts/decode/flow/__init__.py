"""CosyVoice2's flow (speech tokens -> mel) over packed chunks of many streams, every cache in the paged pool:
the pool's tensors (`flow_cache.py`), a pass's index tensors (`flow_inputs.py`), the encoder and the CFM estimator
per op or in fused launches (`paged_encoder.py`, `paged_estimator.py`, `fused_estimator.py`, `paged_flow.py`),
one CUDA graph per bucket (`flow_runner.py`, captured by `kernels/cuda_graphs.record_graph` as every graph is),
and the whole-utterance estimator's ONNX export with its optional TensorRT engine (`estimator_onnx.py`, `trt.py`)."""
