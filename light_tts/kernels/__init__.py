"""Triton kernels of the Qwen2 speech-token LM; the engine calls them through light_tts.kernels.ops."""
