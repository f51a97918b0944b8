"""The speech-token LM's kernels: prefill and flash-decoding attention over the paged KV cache, the KV store,
RMSNorm, rotary (the qkv projection's epilogue), SiLU-and-mul, the sampling kernels (RAS, nucleus) and the
quantized GEMMs and formats (fp8, int8). `ops.py` is the one entry point the LLM engine calls."""
