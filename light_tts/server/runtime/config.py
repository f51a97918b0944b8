"""The one server configuration: built from the command line once, validated, then passed to every process.

Flags are grouped by the stage they configure; settings.py derives every process's settings from them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from light_tts.request_rules import MAX_SPEECH_TOKENIZER_SECONDS, MAX_TEXT_CHARS, VOICE_ID_PREFIX
from light_tts.server.runtime.devices import parse_gpu_list
from light_tts.server.runtime.model_set import parse_model_specs

DATA_TYPES = ("float16", "bfloat16", "float32")
# light_tts.llm.config's (not imported: the decode and HTTP processes never import light_tts.llm)
QUANTIZATIONS = ("none", "fp8", "int8")
SMALL_BATCH_MAX_ROWS = 8  # the LLM's kernels/llm/small_batch.py MAX_ROWS (a test checks they agree)
KV_CACHE_DTYPES = ("auto", "fp8", "int8")
ZMQ_MODES = ("ipc:///tmp/", "tcp://")
HOP_POLICIES = ("fixed", "growing")
WORKER_FAILURE_POLICIES = ("restart", "exit")
# flags that, when not given, are sized to a GPU host at startup (runtime/defaults.py)
DERIVED = (
    "httpserver_workers",
    "encode_process_num",
    "running_max_req_size",
    "decode_max_batch_size",
    "hop_policy",
    "max_total_token_num",
    "flow_cache_dtype",
    "decode_mem_fraction",
    "router_max_wait_tokens",
    "latency_lane",
)
PROMPT_MODELS = ("auto", "torch", "onnx")
LATENCY_LANES = ("off", "short_steps")


def str2bool(value: str | bool) -> bool:
    """argparse's `type=bool` turns "False" into True; this reads what people actually type."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "t", "yes", "y", "1", "on"):
        return True
    if text in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False/1/0), got {value!r}")


GROUPS = ("HTTP", "API", "encode", "LLM", "decode", "limits", "runtime")  # --help lists the flags in these groups


def _opt(
    group: str, default: Any, help: str, default_text: str | None = None, repr: bool = True, **argparse_kwargs: Any
) -> Any:
    """A dataclass field that also carries its --help group and text, and extra add_argument kwargs.
    `default_text` says what the default means where the value alone would not (None, 0); --help shows it once.
    `repr=False` keeps a secret out of repr(cfg) (and so out of any log line that prints the config)."""
    assert group in GROUPS and "default" not in help, help  # the parser appends the default, once
    return field(
        default=default,
        repr=repr,
        metadata={"group": group, "help": help, "default_text": default_text, **argparse_kwargs},
    )


@dataclass(frozen=True)
class ServerConfig:
    # HTTP
    host: str = _opt("HTTP", "127.0.0.1", "address the HTTP server binds")
    port: int = _opt("HTTP", 8080, "HTTP port")
    httpserver_workers: int = _opt("HTTP", 1, "HTTP server worker processes (they share the port)")
    http_header_timeout_s: float = _opt(
        "HTTP", 10.0, "a connection that has not sent its request headers this long after connecting is closed"
    )
    http_body_timeout_s: float = _opt("HTTP", 30.0, "a request body that sends nothing for this long gets 408")
    http_body_deadline_s: float = _opt(
        "HTTP", 120.0, "a request body not complete this long after its request began gets 408, however it trickles in"
    )
    ws_idle_timeout_s: float = _opt(
        "HTTP",
        60.0,
        "a WebSocket that sends no message for this long while it "
        "owes one (the bistream start, wav and pieces before its "
        "finish; a text-in session with nothing being spoken) gets an "
        "error event and is closed with 1008, freeing its slot",
    )
    # API: keys and saved voices
    api_key: tuple[str, ...] | None = _opt(
        "API",
        None,
        "an API key: every endpoint but the probes (/liveness, "
        "/readiness, /healthz) and the playground's static page then "
        "needs 'Authorization: Bearer KEY'; repeat the flag for "
        "several keys (--api_key_file keeps them off the command line)",
        default_text="none: no key needed",
        repr=False,
        action="append",
    )
    api_key_file: str | None = _opt(
        "API",
        None,
        "a file of API keys, one a line (blank lines and # comments skipped), added to those of --api_key",
        default_text="none",
    )
    metrics_public: bool = _opt("API", False, "/metrics answers without an API key (for a Prometheus that sends none)")
    data_dir: str | None = _opt(
        "API",
        None,
        "directory of the saved voices (SQLite and files); every HTTP worker shares it and voices survive restarts",
        default_text="$XDG_DATA_HOME/lighttts, else ~/.local/share/lighttts",
    )
    voice_alias: tuple[str, ...] | None = _opt(
        "API",
        None,
        "NAME=VOICE: requests may name a saved voice (its id, "
        "or its name: the newest voice of that name) NAME, e.g. "
        "alloy=voice_ab12 for OpenAI clients, which send OpenAI's "
        "voice names; repeatable",
        default_text="none",
        action="append",
    )
    max_voices: int = _opt(
        "API",
        1000,
        "saved voices kept at most (an upload beyond gets 409); their upload size "
        "and length are --max_prompt_wav_bytes and --max_prompt_seconds",
    )
    # encode
    encode_process_num: int = _opt(
        "encode",
        1,
        "encode processes: text normalisation and prompt audio features "
        "(on the CPU; ONNX Runtime uses a GPU by itself when it has one)",
    )
    encode_paral_num: int = _opt("encode", 50, "messages an encode process takes from its queue per loop turn")
    cache_capacity: int = _opt("encode", 200, "voices kept in the shared-memory voice cache (LRU)")
    prompt_models: str = _opt(
        "encode",
        "auto",
        "what runs a new voice's speech tokenizer and speaker model: torch "
        "(modules built from their ONNX files, on the first LLM's GPU, or "
        "the CPU without one), onnx (ONNX Runtime on the host's cores), or "
        "auto (torch on a GPU, onnx on a CPU host); a graph the torch "
        "runner cannot run stays on ONNX Runtime, said at startup",
        choices=PROMPT_MODELS,
    )
    # LLM
    gpt_paral_num: int = _opt("LLM", 50, "messages the LLM process admits per loop turn")
    data_type: str = _opt(
        "LLM", "float16", "LLM compute dtype on a GPU; on the CPU the LLM always runs float32", choices=DATA_TYPES
    )
    max_total_token_num: int | None = _opt(
        "LLM",
        None,
        "KV-cache capacity of the LLM in tokens",
        default_text="sized from free GPU memory; 65536 at most on the CPU",
    )
    max_req_total_len: int = _opt("LLM", 8192, "most prompt + generated tokens of one LLM request")
    batch_max_tokens: int | None = _opt(
        "LLM", None, "most tokens in one prefill batch", default_text="--max_req_total_len"
    )
    graph_max_batch_size: int | None = _opt(
        "LLM",
        None,
        "largest LLM decode batch run as a CUDA graph (GPU only; a larger batch runs eagerly, several times slower)",
        default_text="--running_max_req_size: every batch",
    )
    prefill_graph_max_tokens: int = _opt(
        "LLM",
        512,
        "most new tokens of an LLM prefill (of up to 8 requests) run as a CUDA graph (GPU only; 0: none; a longer "
        "prefill runs eagerly, launch-bound)",
    )
    disable_cudagraph: bool = _opt(
        "LLM", False, "run the LLM and the decode engine without CUDA graphs (GPU only; the CPU never uses them)"
    )
    kv_cache_mem_fraction: float = _opt(
        "LLM",
        0.5,
        "share of the GPU memory left after warm-up that the LLM KV "
        "caches on that GPU take, split evenly between them, the rest is "
        "the decode processes' (GPU only)",
    )
    disable_prefix_cache: bool = _opt("LLM", False, "do not share the KV cache of a voice's prompt between requests")
    quantization: str = _opt(
        "LLM",
        "none",
        "LLM weights: fp8 (e4m3 weights with a scale per output channel, "
        "activations quantized per token; GPUs of compute capability 8.9+: "
        "L4, L40S, H100, H200) or int8 (weights only, any GPU); the embeddings "
        "and the output head stay in --data_type (docs/quantization.md)",
        choices=QUANTIZATIONS,
        default_text="none: --data_type",
    )
    kv_cache_dtype: str = _opt(
        "LLM",
        "auto",
        "LLM KV cache: fp8 (8.9+ GPUs) or int8, with a scale per token and "
        "head: half the bytes of float16, so about twice the tokens",
        choices=KV_CACHE_DTYPES,
        default_text="auto: --data_type",
    )
    llm_small_batch_rows: int = _opt(
        "LLM",
        -1,
        "decode batches of up to this many rows (at most 8) run the LLM's "
        "small-batch kernels: norm, projection, rotary, K/V store and SiLU "
        "fused into ~6 launches a layer instead of ~10 (0: off; -1: the "
        "model's setting on a GPU, where they measured faster: CosyVoice 2, "
        "Orpheus 0; off on the CPU, which runs their references)",
        default_text="-1: the model's",
    )
    router_max_wait_tokens: int = _opt(
        "LLM", 8, "decode steps a ready prefill may wait, to batch arrivals (0: it runs at the next step)"
    )
    mode: tuple[str, ...] | None = _opt(
        "LLM", None, "no effect, accepted for compatibility: kernels are chosen automatically", default_text="not given"
    )
    # decode
    decode_process_num: int = _opt(
        "decode",
        1,
        "decode processes (token2wav) per decode group (models with identical "
        "flow/HiFT files share one), each on its own ZMQ endpoint",
    )
    decode_max_batch_size: int = _opt("decode", 8, "requests a decode process batches through token2wav at once")
    decode_max_streams: int = _opt(
        "decode",
        512,
        "streams a decode process holds a flow cache for at once (each has a slot of conv context); later ones wait",
    )
    decode_mem_fraction: float = _opt(
        "decode",
        0.85,
        "share of the GPU memory free after the decode warm-up that the "
        "flow-cache pools on that GPU take, split evenly between its "
        "decode processes (GPU only; the CPU pool is 384 MB)",
    )
    flow_cache_dtype: str = _opt(
        "decode",
        "auto",
        "flow-cache keys/values: float16, bfloat16, or fp8_e4m3 (per-page, "
        "per-head scales; half the memory, not upstream-exact)",
        choices=("auto", "float16", "bfloat16", "float32", "fp8_e4m3"),
        default_text="auto: the flow's dtype",
    )
    deadline_margin_s: float = _opt(
        "decode", 0.3, "a stream's next chunk is due this long before its listener would run out of audio"
    )
    decode_reservation: str = _opt(
        "decode",
        "lazy",
        "lazy: a stream takes pool pages chunk by chunk and the newest "
        "is preempted (recomputed later) when they run out; full: it "
        "reserves its whole utterance at admission",
        choices=("lazy", "full"),
    )
    admission_wait_s: float = _opt(
        "decode",
        5.0,
        "a new stream that finds no room in its decode process (pool "
        "pages, or on a GPU the real-time capacity of the measured steps) "
        "waits this long, then gets 429 with Retry-After, before any "
        "audio; a non-stream utterance held back for streams half as "
        "long takes its turn",
    )
    decode_headroom: float = _opt(
        "decode",
        0.05,
        "lazy reservation: share of the pool that new streams leave free, "
        "the room the streams already playing grow into",
    )
    preempt_interval_s: float = _opt(
        "decode",
        5.0,
        "lazy reservation: a stream gives its pages back to an older "
        "one (and recomputes them later) only when that one would "
        "stall, and at most once per this many seconds",
    )
    decode_pool_pages: int | None = _opt(
        "decode",
        None,
        "flow-cache pages per decode process (one page: one "
        "second of one stream), instead of sizing the pool from "
        "memory",
        default_text="sized from free memory (GPU) or 384 MB (CPU)",
    )
    first_hop_tokens: int = _opt(
        "decode",
        0,
        "speech tokens of a stream's first chunk (e.g. 15: earlier first audio; not upstream-exact for those tokens)",
        default_text="0: upstream's 25 plus the prompt's alignment pad",
    )
    flow_context_window: float = _opt(
        "decode",
        0.0,
        "seconds of generated audio the flow attends to besides the "
        "prompt: constant memory and time per chunk, not "
        "upstream-exact",
        default_text="0: all of it",
    )
    latency_lane: str = _opt(
        "decode",
        "off",
        "short_steps: while a stream's first chunk is on its way or in the "
        "step, decode steps take no early chunks (a step in flight when its "
        "tokens arrive is short); off: steps fill up to "
        "--decode_step_target_s with early chunks",
        choices=LATENCY_LANES,
    )
    decode_step_target_s: float = _opt(
        "decode",
        0.08,
        "with spare capacity, decode steps grow to about this long with chunks of streams ahead of their listeners",
    )
    llm_ahead_seconds: float = _opt(
        "LLM",
        3.0,
        "while a stream makes its first hop, LLM requests more than this "
        "far ahead of real time sit the step out (0: never)",
    )
    hop_policy: str = _opt(
        "decode",
        "growing",
        "streamed chunk sizes after the first: fixed (25 tokens, lowest "
        "latency) or growing (25 -> 50 -> 100, fewer chunks)",
        choices=HOP_POLICIES,
    )
    decode_data_type: str = _opt(
        "decode",
        "float16",
        "flow dtype on a GPU (HiFT's convolutions run float16 there, its "
        "source and iSTFT float32); every CPU run uses float32",
        choices=DATA_TYPES,
    )
    snac_kernels: str = _opt(
        "decode",
        "fused",
        "Orpheus's SNAC decoder on a GPU: fused (its blocks in Triton "
        "launches around the 1x1-conv GEMMs: 93 kernels a decode instead "
        "of 691, 2.6x faster on an H100) or module (the reference module's "
        "graph, for A/B runs); the CPU runs the module",
        choices=("module", "fused"),
    )
    decode_hot_path: str = _opt(
        "decode",
        "auto",
        "per_op: the earlier decode path on a GPU too (fp32 HiFT with "
        "per-request generators, HiFT after the flow), for A/B runs; fused: "
        "auto plus the fused estimator (fewer launches, but measured slower "
        "on an H100: docs/performance.md)",
        choices=("auto", "fused", "per_op"),
        default_text="auto: on a GPU the per-op flow with fp16 HiFT convolutions, keyed "
        "noise and HiFT overlapped with the next flow pass; on a CPU per_op",
    )
    load_trt: bool = _opt(
        "decode",
        False,
        "no effect, accepted for compatibility: the paged flow runs Triton "
        "kernels in CUDA graphs (a TensorRT engine cannot read the page pool)",
    )
    decode_paral_num: int | None = _opt(
        "decode",
        None,
        "no effect, accepted for compatibility: decode concurrency is --decode_max_batch_size",
        default_text="not given",
    )
    # limits
    running_max_req_size: int = _opt(
        "limits", 30, "request slots: concurrent requests in the whole server (more get 429)"
    )
    max_requests_per_client: int = _opt(
        "limits", 0, "requests one client address may have in flight at once (more get 429)", default_text="0: no limit"
    )
    request_timeout_s: float = _opt("limits", 300.0, "a request running longer ends with a timeout error")
    max_text_chars: int = _opt("limits", MAX_TEXT_CHARS, "longest tts_text / prompt_text accepted")
    max_prompt_wav_bytes: int = _opt("limits", 16 << 20, "largest prompt wav upload in bytes")
    max_prompt_seconds: float = _opt("limits", 30.0, "longest prompt audio accepted")
    max_vc_source_seconds: float = _opt(
        "limits",
        30.0,
        "longest source recording POST /v1/audio/voice-conversion "
        "accepts (longer: 413); the speech tokenizer takes at most "
        "30 s, and --max_speech_tokens bounds it too",
    )
    max_speech_tokens: int = _opt(
        "limits",
        1500,
        "most speech tokens (25 per second of audio) one sentence may "
        "produce: the LLM stops there, the decode pool reserves for it",
    )
    max_audio_seconds: float = _opt(
        "limits",
        900.0,
        "audio one request may produce; a request that would produce more ends with 413 when it passes the limit",
    )
    # runtime
    model_dir: tuple[str, ...] | None = _opt(
        "runtime",
        None,
        "CosyVoice2 model directory, as DIR or NAME=DIR "
        "(NAME: its tts_model_name, else the folder's name); "
        "repeat the flag to serve several models, the first "
        "is the one a request without tts_model_name gets",
        default_text="none: a tiny random-weight model, its audio is noise",
        action="append",
    )
    device: str = _opt(
        "runtime",
        "auto",
        "torch device of the LLM and decode processes: auto (the GPUs if any, else the CPU), cpu, cuda or cuda:N",
    )
    idle_release_s: float = _opt(
        "runtime",
        0.0,
        "after this many seconds without requests, the LLM and decode "
        "processes free their device memory (caches, graphs; weights to "
        "host memory); the next request waits for the reload",
        default_text="0: never",
    )
    cpu_threads: int = _opt("runtime", 1, "torch threads per worker process (1 avoids oversubscribing small hosts)")
    llm_gpus: str | None = _opt(
        "runtime",
        None,
        "GPUs of the LLM processes, e.g. 0,1: they take them in turn (a model's replicas on different GPUs)",
        default_text="0",
    )
    decode_gpus: str | None = _opt(
        "runtime",
        None,
        "GPUs of the decode processes, e.g. 1,2,3: they take them in "
        "turn, several per GPU when there are more processes",
        default_text="the GPUs the LLMs do not use, or GPU 0 when it is the only one",
    )
    llm_replicas: int = _opt(
        "runtime",
        1,
        "LLM processes per model (data parallel, on the --llm_gpus in turn); each request goes to the least loaded",
    )
    simulate_gpus: int = _opt(
        "runtime",
        0,
        "testing: plan the placement and memory shares for this many GPUs and run every process on the CPU",
        default_text="0: the visible GPUs",
    )
    zmq_mode: str = _opt("runtime", "ipc:///tmp/", "ZMQ transport between processes", choices=ZMQ_MODES)
    on_worker_failure: str = _opt(
        "runtime",
        "restart",
        "when a worker dies or hangs: restart it (its requests "
        "fail with 503), or exit (for orchestrators that restart "
        "the whole server)",
        choices=WORKER_FAILURE_POLICIES,
    )
    worker_hang_timeout_s: float = _opt(
        "runtime",
        120.0,
        "a backend whose loop has not turned for this long is "
        "hung: /readiness says so, and it is killed and handled as "
        "dead (one decode step of a long non-stream sentence can "
        "take tens of seconds on a CPU)",
    )
    max_restarts: int = _opt(
        "runtime",
        3,
        "restarts of one worker within 60 s before the server gives up and exits with code 1 (a crash loop)",
    )
    drain_timeout_s: float = _opt(
        "runtime",
        30.0,
        "on SIGTERM: seconds in-flight requests get to finish (new ones get 503) before they are cut with an error",
    )
    shutdown_grace_s: float = _opt(
        "runtime",
        3.0,
        "with --on_worker_failure exit, after a worker died: seconds to fail requests and report unready, then exit",
    )
    log_level: str = _opt("runtime", "info", "logging level", choices=("debug", "info", "warning", "error"))
    # not a flag: the flags given on the command line (the others may be sized to a GPU host: runtime/defaults.py)
    given: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.model_dir, str):  # ServerConfig(model_dir="DIR"): one model
            object.__setattr__(self, "model_dir", (self.model_dir,))
        elif self.model_dir is not None:
            object.__setattr__(self, "model_dir", tuple(self.model_dir))
        parse_model_specs(self.model_dir or ())  # names: distinct, not "default"
        if self.voice_alias is not None:
            object.__setattr__(self, "voice_alias", tuple(self.voice_alias))
        self.voice_aliases()  # NAME=VOICE, names distinct
        positive = (
            "httpserver_workers",
            "encode_process_num",
            "decode_process_num",
            "encode_paral_num",
            "gpt_paral_num",
            "decode_max_batch_size",
            "max_req_total_len",
            "running_max_req_size",
            "cache_capacity",
            "max_text_chars",
            "max_prompt_wav_bytes",
            "cpu_threads",
            "max_voices",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_paral_num is not None and self.decode_paral_num < 1:
            raise ValueError("--decode_paral_num must be >= 1")
        if not 0 < self.kv_cache_mem_fraction < 1:
            raise ValueError("--kv_cache_mem_fraction must be in (0, 1)")
        if self.decode_max_streams < 1 or self.max_speech_tokens < 1:
            raise ValueError("--decode_max_streams and --max_speech_tokens must be >= 1")
        if not 0 < self.decode_mem_fraction <= 1 or self.deadline_margin_s < 0:
            raise ValueError("--decode_mem_fraction must be in (0, 1], --deadline_margin_s >= 0")
        if not 0 <= self.decode_headroom < 1 or self.preempt_interval_s < 0:
            raise ValueError("--decode_headroom must be in [0, 1), --preempt_interval_s >= 0")
        if self.decode_pool_pages is not None and self.decode_pool_pages < 1:
            raise ValueError("--decode_pool_pages must be >= 1")
        if self.first_hop_tokens < 0 or self.flow_context_window < 0 or self.llm_ahead_seconds < 0:
            raise ValueError("--first_hop_tokens, --flow_context_window and --llm_ahead_seconds must be >= 0")
        if self.prefill_graph_max_tokens < 0:
            raise ValueError("--prefill_graph_max_tokens must be >= 0")
        for name in ("batch_max_tokens", "max_total_token_num", "graph_max_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"--data_type must be one of {DATA_TYPES}")
        if self.quantization not in QUANTIZATIONS or self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"--quantization must be one of {QUANTIZATIONS}, --kv_cache_dtype one of {KV_CACHE_DTYPES}"
            )
        if not -1 <= self.llm_small_batch_rows <= SMALL_BATCH_MAX_ROWS:
            raise ValueError(f"--llm_small_batch_rows must be in 0..{SMALL_BATCH_MAX_ROWS}, or -1 (the model's)")
        if self.hop_policy not in HOP_POLICIES or self.decode_data_type not in DATA_TYPES:
            raise ValueError(f"--hop_policy must be one of {HOP_POLICIES}, --decode_data_type one of {DATA_TYPES}")
        if self.router_max_wait_tokens < 0:
            raise ValueError("--router_max_wait_tokens must be >= 0 (0: a prefill runs at the next step)")
        if self.latency_lane not in LATENCY_LANES or self.decode_step_target_s <= 0:
            raise ValueError(f"--latency_lane must be one of {LATENCY_LANES}, --decode_step_target_s > 0")
        if self.prompt_models not in PROMPT_MODELS:
            raise ValueError(f"--prompt_models must be one of {PROMPT_MODELS}")
        if self.zmq_mode not in ZMQ_MODES:
            raise ValueError(f"--zmq_mode must be one of {ZMQ_MODES}")
        if self.on_worker_failure not in WORKER_FAILURE_POLICIES:
            raise ValueError(f"--on_worker_failure must be one of {WORKER_FAILURE_POLICIES}")
        for name in (
            "http_header_timeout_s",
            "http_body_timeout_s",
            "http_body_deadline_s",
            "ws_idle_timeout_s",
            "worker_hang_timeout_s",
            "max_audio_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0")
        if self.drain_timeout_s < 0 or self.max_restarts < 0 or self.max_requests_per_client < 0:
            raise ValueError("--drain_timeout_s, --max_restarts and --max_requests_per_client must be >= 0")
        if self.request_timeout_s <= 0 or self.max_prompt_seconds <= 0 or self.shutdown_grace_s < 0:
            raise ValueError("--request_timeout_s and --max_prompt_seconds must be > 0, --shutdown_grace_s >= 0")
        if not 0 < self.max_vc_source_seconds <= MAX_SPEECH_TOKENIZER_SECONDS:
            raise ValueError(
                f"--max_vc_source_seconds must be in (0, {MAX_SPEECH_TOKENIZER_SECONDS:g}] (the speech "
                f"tokenizer's limit), got {self.max_vc_source_seconds:g}"
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        parse_gpu_list(self.llm_gpus, "llm_gpus"), parse_gpu_list(self.decode_gpus, "decode_gpus")
        if self.llm_replicas < 1 or self.simulate_gpus < 0:
            raise ValueError("--llm_replicas must be >= 1, --simulate_gpus >= 0")
        if (self.llm_gpus or self.decode_gpus or self.simulate_gpus) and self.device not in ("auto", "cpu"):
            raise ValueError(
                f"--device {self.device} puts every process on one device: drop it to use "
                "--llm_gpus, --decode_gpus or --simulate_gpus"
            )

    def ignored_flags(self) -> list[str]:
        """Startup notes for flags that are accepted for compatibility but change nothing."""
        notes = []
        if self.mode is not None:
            notes.append(
                f"--mode {' '.join(self.mode)} has no effect: kernels are chosen automatically (LightLLM's "
                "int8/fp8 modes are --quantization and --kv_cache_dtype)"
            )
        if self.decode_paral_num is not None:
            notes.append(
                f"--decode_paral_num {self.decode_paral_num} has no effect: decode concurrency is "
                f"--decode_max_batch_size ({self.decode_max_batch_size})"
            )
        if self.load_trt:
            notes.append(
                "--load_trt has no effect: the paged flow runs Triton kernels in CUDA graphs, which a "
                "TensorRT engine cannot replace (it cannot read the page pool)"
            )
        return notes

    @classmethod
    def build_parser(cls, defaults: bool = True) -> argparse.ArgumentParser:
        """The command line; defaults=False leaves every flag not given out of the parsed namespace."""
        parser = argparse.ArgumentParser(
            prog="python -m light_tts.server.api_server",
            description="LightTTS: a streaming CosyVoice2 text-to-speech server. Flags are grouped by the stage "
            "they configure; each says what it does on a GPU and on the CPU where that differs.",
            argument_default=None if defaults else argparse.SUPPRESS,
        )
        groups = {name: parser.add_argument_group(name) for name in GROUPS}
        for f in fields(cls):
            if "group" not in f.metadata:  # not a flag
                continue
            kwargs: dict[str, Any] = {k: v for k, v in f.metadata.items() if k not in ("group", "default_text")}
            host = "; on a GPU host: sized to it at startup" if f.name in DERIVED else ""
            kwargs["help"] = f"{kwargs['help']} (default: {f.metadata['default_text'] or f.default}{host})"
            group, flag = groups[f.metadata["group"]], f"--{f.name}"
            if f.type in ("bool", bool):
                # `--flag` alone means True; `--flag False` / `--flag 0` means False.
                kwargs.update(type=str2bool, nargs="?", const=True, default=f.default)
            elif f.name == "mode" or f.type.startswith("tuple"):  # several values, or a repeatable flag
                kwargs.update({"nargs": "+"} if f.name == "mode" else {}, default=None)  # (append: a list)
            else:
                kwargs.update(type=_field_type(f.type), default=f.default)
            if not defaults:
                del kwargs["default"]
            group.add_argument(flag, **kwargs)
        return parser

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> ServerConfig:
        parser = cls.build_parser()
        values = vars(parser.parse_args(argv))
        for name in ("mode", "api_key", "model_dir", "voice_alias"):
            if values[name] is not None:
                values[name] = tuple(values[name])
        given = tuple(sorted(vars(cls.build_parser(defaults=False).parse_args(argv))))
        try:
            return cls(**values, given=given)
        except ValueError as e:  # a clear message and exit code 2, as for a malformed flag
            parser.error(str(e))

    def voice_aliases(self) -> dict[str, str]:
        """--voice_alias as alias -> saved voice id or name."""
        aliases: dict[str, str] = {}
        for spec in self.voice_alias or ():
            alias, _, target = spec.partition("=")
            alias, target = alias.strip(), target.strip()
            if not alias or not target or alias.startswith(VOICE_ID_PREFIX):
                raise ValueError(
                    f"--voice_alias takes NAME=VOICE (NAME not starting with {VOICE_ID_PREFIX}), got {spec!r}"
                )
            if alias in aliases:
                raise ValueError(f"--voice_alias names {alias!r} twice")
            aliases[alias] = target
        return aliases

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)


def _field_type(annotation: str) -> Any:
    """`from __future__ import annotations` leaves types as strings; map them to argparse converters."""
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str}[base]
