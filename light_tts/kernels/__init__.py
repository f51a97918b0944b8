"""Triton kernels, each beside its torch reference (the CPU path and the tests' oracle). `llm/` holds the
speech-token LM's (attention, KV store, RMSNorm, rotary, SiLU, sampling, quantized GEMMs), called through
`llm/ops.py`; `flow/` the decode process's (the flow's paged attention and fused estimator blocks, HiFT's Snake
and keyed noise), called through `flow/flow_ops.py`. `dispatch.py` picks kernel or reference for both.

Imports only the core modules (`sampling`); `flow/` never imports `llm/` and `llm/` never imports `flow/`.
"""
