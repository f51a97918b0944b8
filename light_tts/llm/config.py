"""EngineConfig: the LLM engine's settings (derived from ServerConfig in `server/runtime/settings.py`). No torch
import: the launcher and the HTTP workers build it without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass

DATA_TYPES = ("float16", "bfloat16", "float32")
QUANTIZATIONS = ("none", "fp8", "int8")  # LLM weights (quantization.py, docs/quantization.md)
KV_CACHE_DTYPES = ("auto", "fp8", "int8")  # LLM KV cache; auto: data_type
SMALL_BATCH_MAX_ROWS = 8  # kernels/llm/small_batch.py's MAX_ROWS (a test checks they agree)


@dataclass
class EngineConfig:
    max_total_token_num: int | None = None  # KV cache slots (tokens); None: from free GPU memory (CPU: 65536)
    batch_max_tokens: int = 8192  # new tokens in one prefill batch
    running_max_req_size: int = 256  # requests holding KV at once
    graph_max_batch_size: int = 256  # largest decode batch run as a CUDA graph
    disable_cudagraph: bool = False  # no decode graphs and no prefill graphs
    prefill_graph_max_tokens: int = 512  # most new tokens of a prefill (<= 8 requests) run as a CUDA graph (0: none)
    data_type: str = "bfloat16"  # float16 | bfloat16 | float32
    router_max_wait_tokens: int = 4  # decode steps a ready prefill may wait, to batch arrivals
    max_req_total_len: int = 4096  # inputs of one request, prompt + generated
    enable_prefix_cache: bool = True
    kv_cache_mem_fraction: float = 0.5  # of the GPU memory free after warm-up (flow and HiFT share the GPU)
    first_hop_tokens: int = 52  # speech tokens a stream needs for its first audio (hop + largest pad + lookahead)
    ahead_tokens: int = 0  # > 0: during first hops, requests this far ahead of real time sit a step out
    tokens_per_second: float = 25  # the model's tokens per second of audio (real time, for ahead_tokens)
    quantization: str = "none"  # none | fp8 (weights and activations) | int8 (weights only)
    kv_cache_dtype: str = "auto"  # auto (data_type) | fp8 | int8
    small_batch_rows: int = 0  # decode batches up to this many rows run the small-batch kernels (0: none)

    def __post_init__(self):
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"data_type must be one of {list(DATA_TYPES)}, got {self.data_type!r}")
        if self.quantization not in QUANTIZATIONS or self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"quantization must be one of {list(QUANTIZATIONS)} and kv_cache_dtype one of "
                f"{list(KV_CACHE_DTYPES)}, got {self.quantization!r}, {self.kv_cache_dtype!r}"
            )
        for name in ("batch_max_tokens", "running_max_req_size", "graph_max_batch_size", "max_req_total_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.small_batch_rows <= SMALL_BATCH_MAX_ROWS:
            raise ValueError(f"small_batch_rows must be in 0..{SMALL_BATCH_MAX_ROWS}, got {self.small_batch_rows}")
        if self.max_total_token_num is not None and self.max_total_token_num < 2:
            raise ValueError("max_total_token_num must be >= 2")
