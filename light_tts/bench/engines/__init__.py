"""What the engine benchmarks share: the decode bench's models, engines of each hot-path variant and passes
(`decode_parts.py`, used by `decode`, `decode_profile`, `flow_deviation`, `quant`) and its roofline
(`decode_roofline.py`); the LLM bench's model families, requests and reference scorer (`llm_models.py`, used by
`llm` and `quant`)."""
