"""CosyVoice2's own modules: the speech LM head around the shared Qwen2 body, the flow (conformer encoder + CFM
estimator) and HiFT. Parameter names match the released checkpoints (`llm.pt`, `flow.pt`, `hift.pt`)."""
