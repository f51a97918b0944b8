"""The one server configuration: built from the command line once, validated, then passed to every process.

Flags are grouped by the stage they configure; settings.py derives every process's settings from them.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from light_tts.request_rules import MAX_TEXT_CHARS, VOICE_ID_PREFIX
from light_tts.server.runtime.devices import parse_gpu_list
from light_tts.server.runtime.model_set import parse_model_specs

DATA_TYPES = ("float16", "bfloat16", "float32")
ZMQ_MODES = ("ipc:///tmp/", "tcp://")
HOP_POLICIES = ("fixed", "growing")
WORKER_FAILURE_POLICIES = ("restart", "exit")


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


def _opt(group: str, default: Any, help: str, default_text: str | None = None, repr: bool = True,
         **argparse_kwargs: Any) -> Any:
    """A dataclass field that also carries its --help group and text, and extra add_argument kwargs.
    `default_text` says what the default means where the value alone would not (None, 0); --help shows it once.
    `repr=False` keeps a secret out of repr(cfg) (and so out of any log line that prints the config)."""
    assert group in GROUPS and "default" not in help, help  # the parser appends the default, once
    return field(default=default, repr=repr, metadata={"group": group, "help": help, "default_text": default_text,
                                                       **argparse_kwargs})


@dataclass(frozen=True)
class ServerConfig:
    # HTTP
    host: str = _opt("HTTP", "127.0.0.1", "address the HTTP server binds")
    port: int = _opt("HTTP", 8080, "HTTP port")
    httpserver_workers: int = _opt("HTTP", 1, "HTTP server worker processes (they share the port)")
    http_header_timeout_s: float = _opt("HTTP", 10.0, "a connection that has not sent its request headers this "
                                                      "long after connecting is closed")
    http_body_timeout_s: float = _opt("HTTP", 30.0, "a request body that sends nothing for this long gets 408")
    ws_idle_timeout_s: float = _opt("HTTP", 60.0, "a WebSocket that sends no message for this long before it "
                                                  "has finished its text gets an error and is closed")
    # API: keys and saved voices
    api_key: tuple[str, ...] | None = _opt("API", None, "an API key: every endpoint but the probes (/liveness, "
                                                        "/readiness, /healthz) and the playground's static page then "
                                                        "needs 'Authorization: Bearer KEY'; repeat the flag for "
                                                        "several keys (--api_key_file keeps them off the command line)",
                                           default_text="none: no key needed", repr=False, action="append")
    api_key_file: str | None = _opt("API", None, "a file of API keys, one a line (blank lines and # comments "
                                                 "skipped), added to those of --api_key", default_text="none")
    metrics_public: bool = _opt("API", False, "/metrics answers without an API key (for a Prometheus that sends "
                                              "none)")
    data_dir: str | None = _opt("API", None, "directory of the saved voices (SQLite and files); every HTTP worker "
                                             "shares it and voices survive restarts",
                                default_text="$XDG_DATA_HOME/lighttts, else ~/.local/share/lighttts")
    voice_alias: tuple[str, ...] | None = _opt("API", None, "NAME=VOICE: requests may name a saved voice (its id, "
                                                            "or its name: the newest voice of that name) NAME, e.g. "
                                                            "alloy=voice_ab12 for OpenAI clients, which send OpenAI's "
                                                            "voice names; repeatable", default_text="none",
                                               action="append")
    max_voices: int = _opt("API", 1000, "saved voices kept at most (an upload beyond gets 409); their upload size "
                                        "and length are --max_prompt_wav_bytes and --max_prompt_seconds")
    # encode
    encode_process_num: int = _opt("encode", 1, "encode processes: text normalisation and prompt audio features "
                                               "(on the CPU; ONNX Runtime uses a GPU by itself when it has one)")
    encode_paral_num: int = _opt("encode", 50, "messages an encode process takes from its queue per loop turn")
    cache_capacity: int = _opt("encode", 200, "voices kept in the shared-memory voice cache (LRU)")
    # LLM
    gpt_paral_num: int = _opt("LLM", 50, "messages the LLM process admits per loop turn")
    data_type: str = _opt("LLM", "float16", "LLM compute dtype on a GPU; on the CPU the LLM always runs float32",
                          choices=DATA_TYPES)
    max_total_token_num: int | None = _opt("LLM", None, "KV-cache capacity of the LLM in tokens",
                                           default_text="sized from free GPU memory; 65536 at most on the CPU")
    max_req_total_len: int = _opt("LLM", 8192, "most prompt + generated tokens of one LLM request")
    batch_max_tokens: int | None = _opt("LLM", None, "most tokens in one prefill batch",
                                        default_text="--max_req_total_len")
    graph_max_batch_size: int | None = _opt("LLM", None, "largest LLM decode batch run as a CUDA graph (GPU only; a "
                                                         "larger batch runs eagerly, several times slower)",
                                            default_text="--running_max_req_size: every batch")
    disable_cudagraph: bool = _opt("LLM", False, "run the LLM and the decode engine without CUDA graphs (GPU "
                                                 "only; the CPU never uses them)")
    kv_cache_mem_fraction: float = _opt("LLM", 0.5, "share of the GPU memory left after warm-up that the LLM KV "
                                                    "caches on that GPU take, split evenly between them, the rest is "
                                                    "the decode processes' (GPU only)")
    disable_prefix_cache: bool = _opt("LLM", False, "do not share the KV cache of a voice's prompt between requests")
    router_max_wait_tokens: int = _opt("LLM", 8, "decode steps a ready prefill may wait, to batch arrivals")
    mode: tuple[str, ...] | None = _opt("LLM", None, "no effect, accepted for compatibility: kernels are chosen "
                                                     "automatically", default_text="not given")
    # decode
    decode_process_num: int = _opt("decode", 1, "decode processes (token2wav) per decode group (models with identical "
                                                 "flow/HiFT files share one), each on its own ZMQ endpoint")
    decode_max_batch_size: int = _opt("decode", 8, "requests a decode process batches through token2wav at once")
    decode_max_streams: int = _opt("decode", 512, "streams a decode process holds a flow cache for at once (each "
                                                  "has a slot of conv context); later ones wait")
    decode_mem_fraction: float = _opt("decode", 0.85, "share of the GPU memory free after the decode warm-up that the "
                                                      "flow-cache pools on that GPU take, split evenly between its "
                                                      "decode processes (GPU only; the CPU pool is 1 GB)")
    flow_cache_dtype: str = _opt("decode", "auto", "flow-cache keys/values: float16, bfloat16, or fp8_e4m3 (per-page, "
                                                   "per-head scales; half the memory, not upstream-exact)",
                                 choices=("auto", "float16", "bfloat16", "float32", "fp8_e4m3"),
                                 default_text="auto: the flow's dtype")
    deadline_margin_s: float = _opt("decode", 0.3, "a stream's next chunk is due this long before its listener "
                                                   "would run out of audio")
    decode_reservation: str = _opt("decode", "lazy", "lazy: a stream takes pool pages chunk by chunk and the newest "
                                                     "is preempted (recomputed later) when they run out; full: it "
                                                     "reserves its whole utterance at admission",
                                   choices=("lazy", "full"))
    admission_wait_s: float = _opt("decode", 5.0, "a stream that finds no room in its decode process (pool pages, "
                                                  "or on a GPU the real-time capacity of the measured steps) "
                                                  "waits this long, then gets 429 with Retry-After")
    first_hop_tokens: int = _opt("decode", 0, "speech tokens of a stream's first chunk (e.g. 15: earlier first "
                                              "audio; not upstream-exact for those tokens)",
                                 default_text="0: upstream's 25 plus the prompt's alignment pad")
    flow_context_window: float = _opt("decode", 0.0, "seconds of generated audio the flow attends to besides the "
                                                     "prompt: constant memory and time per chunk, not "
                                                     "upstream-exact", default_text="0: all of it")
    llm_ahead_seconds: float = _opt("LLM", 3.0, "while a stream makes its first hop, LLM requests more than this "
                                                "far ahead of real time sit the step out (0: never)")
    hop_policy: str = _opt("decode", "growing", "streamed chunk sizes after the first: fixed (25 tokens, lowest "
                                                "latency) or growing (25 -> 50 -> 100, fewer chunks)",
                           choices=HOP_POLICIES)
    decode_data_type: str = _opt("decode", "float16", "flow dtype on a GPU; HiFT, and every CPU run, use float32",
                                 choices=DATA_TYPES)
    load_trt: bool = _opt("decode", False, "no effect, accepted for compatibility: the paged flow runs Triton "
                                           "kernels in CUDA graphs (a TensorRT engine cannot read the page pool)")
    decode_paral_num: int | None = _opt("decode", None, "no effect, accepted for compatibility: decode concurrency "
                                                        "is --decode_max_batch_size", default_text="not given")
    # limits
    running_max_req_size: int = _opt("limits", 30, "request slots: concurrent requests in the whole server (more "
                                                   "get 429)")
    max_requests_per_client: int = _opt("limits", 0, "requests one client address may have in flight at once "
                                                     "(more get 429)", default_text="0: no limit")
    request_timeout_s: float = _opt("limits", 300.0, "a request running longer ends with a timeout error")
    max_text_chars: int = _opt("limits", MAX_TEXT_CHARS, "longest tts_text / prompt_text accepted")
    max_prompt_wav_bytes: int = _opt("limits", 16 << 20, "largest prompt wav upload in bytes")
    max_prompt_seconds: float = _opt("limits", 30.0, "longest prompt audio accepted")
    max_speech_tokens: int = _opt("limits", 1500, "most speech tokens (25 per second of audio) one sentence may "
                                                  "produce: the LLM stops there, the decode pool reserves for it")
    max_audio_seconds: float = _opt("limits", 900.0, "audio one request may produce; a request that would produce "
                                                     "more ends with 413 when it passes the limit")
    # runtime
    model_dir: tuple[str, ...] | None = _opt("runtime", None, "CosyVoice2 model directory, as DIR or NAME=DIR "
                                                          "(NAME: its tts_model_name, else the folder's name); "
                                                          "repeat the flag to serve several models, the first "
                                                          "is the one a request without tts_model_name gets",
                                             default_text="none: a tiny random-weight model, its audio is noise",
                                             action="append")
    device: str = _opt("runtime", "auto", "torch device of the LLM and decode processes: auto (the GPUs if any, "
                                          "else the CPU), cpu, cuda or cuda:N")
    idle_release_s: float = _opt("runtime", 0.0, "after this many seconds without requests, the LLM and decode "
                                                 "processes free their device memory (caches, graphs; weights to "
                                                 "host memory); the next request waits for the reload",
                                 default_text="0: never")
    cpu_threads: int = _opt("runtime", 1, "torch threads per worker process (1 avoids oversubscribing small hosts)")
    llm_gpus: str | None = _opt("runtime", None, "GPUs of the LLM processes, e.g. 0,1: they take them in turn "
                                                 "(a model's replicas on different GPUs)", default_text="0")
    decode_gpus: str | None = _opt("runtime", None, "GPUs of the decode processes, e.g. 1,2,3: they take them in "
                                                    "turn, several per GPU when there are more processes",
                                   default_text="the GPUs the LLMs do not use, or GPU 0 when it is the only one")
    llm_replicas: int = _opt("runtime", 1, "LLM processes per model (data parallel, on the --llm_gpus in turn); "
                                           "each request goes to the least loaded")
    simulate_gpus: int = _opt("runtime", 0, "testing: plan the placement and memory shares for this many GPUs and "
                                            "run every process on the CPU", default_text="0: the visible GPUs")
    zmq_mode: str = _opt("runtime", "ipc:///tmp/", "ZMQ transport between processes", choices=ZMQ_MODES)
    on_worker_failure: str = _opt("runtime", "restart", "when a worker dies or hangs: restart it (its requests "
                                                        "fail with 503), or exit (for orchestrators that restart "
                                                        "the whole server)", choices=WORKER_FAILURE_POLICIES)
    worker_hang_timeout_s: float = _opt("runtime", 120.0, "a backend whose loop has not turned for this long is "
                                                          "hung: /readiness says so, and it is killed and handled as "
                                                          "dead (one decode step of a long non-stream sentence can "
                                                          "take tens of seconds on a CPU)")
    max_restarts: int = _opt("runtime", 3, "restarts of one worker within 60 s before the server gives up and "
                                           "exits with code 1 (a crash loop)")
    drain_timeout_s: float = _opt("runtime", 30.0, "on SIGTERM: seconds in-flight requests get to finish (new ones "
                                                   "get 503) before they are cut with an error")
    shutdown_grace_s: float = _opt("runtime", 3.0, "with --on_worker_failure exit, after a worker died: seconds "
                                                   "to fail requests and report unready, then exit")
    log_level: str = _opt("runtime", "info", "logging level", choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        if isinstance(self.model_dir, str):  # ServerConfig(model_dir="DIR"): one model
            object.__setattr__(self, "model_dir", (self.model_dir,))
        elif self.model_dir is not None:
            object.__setattr__(self, "model_dir", tuple(self.model_dir))
        parse_model_specs(self.model_dir or ())  # names: distinct, not "default"
        if self.voice_alias is not None:
            object.__setattr__(self, "voice_alias", tuple(self.voice_alias))
        self.voice_aliases()  # NAME=VOICE, names distinct
        positive = ("httpserver_workers", "encode_process_num", "decode_process_num", "encode_paral_num",
                    "gpt_paral_num", "decode_max_batch_size",
                    "max_req_total_len", "running_max_req_size", "router_max_wait_tokens",
                    "cache_capacity", "max_text_chars", "max_prompt_wav_bytes", "cpu_threads", "max_voices")
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
        if self.first_hop_tokens < 0 or self.flow_context_window < 0 or self.llm_ahead_seconds < 0:
            raise ValueError("--first_hop_tokens, --flow_context_window and --llm_ahead_seconds must be >= 0")
        for name in ("batch_max_tokens", "max_total_token_num", "graph_max_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"--data_type must be one of {DATA_TYPES}")
        if self.hop_policy not in HOP_POLICIES or self.decode_data_type not in DATA_TYPES:
            raise ValueError(f"--hop_policy must be one of {HOP_POLICIES}, --decode_data_type one of {DATA_TYPES}")
        if self.zmq_mode not in ZMQ_MODES:
            raise ValueError(f"--zmq_mode must be one of {ZMQ_MODES}")
        if self.on_worker_failure not in WORKER_FAILURE_POLICIES:
            raise ValueError(f"--on_worker_failure must be one of {WORKER_FAILURE_POLICIES}")
        for name in ("http_header_timeout_s", "http_body_timeout_s", "ws_idle_timeout_s", "worker_hang_timeout_s",
                     "max_audio_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0")
        if self.drain_timeout_s < 0 or self.max_restarts < 0 or self.max_requests_per_client < 0:
            raise ValueError("--drain_timeout_s, --max_restarts and --max_requests_per_client must be >= 0")
        if self.request_timeout_s <= 0 or self.max_prompt_seconds <= 0 or self.shutdown_grace_s < 0:
            raise ValueError("--request_timeout_s and --max_prompt_seconds must be > 0, --shutdown_grace_s >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        parse_gpu_list(self.llm_gpus, "llm_gpus"), parse_gpu_list(self.decode_gpus, "decode_gpus")
        if self.llm_replicas < 1 or self.simulate_gpus < 0:
            raise ValueError("--llm_replicas must be >= 1, --simulate_gpus >= 0")
        if (self.llm_gpus or self.decode_gpus or self.simulate_gpus) and self.device not in ("auto", "cpu"):
            raise ValueError(f"--device {self.device} puts every process on one device: drop it to use "
                             "--llm_gpus, --decode_gpus or --simulate_gpus")

    def ignored_flags(self) -> list[str]:
        """Startup notes for flags that are accepted for compatibility but change nothing."""
        notes = []
        if self.mode is not None:
            notes.append(f"--mode {' '.join(self.mode)} has no effect: kernels are chosen automatically")
        if self.decode_paral_num is not None:
            notes.append(f"--decode_paral_num {self.decode_paral_num} has no effect: decode concurrency is "
                         f"--decode_max_batch_size ({self.decode_max_batch_size})")
        if self.load_trt:
            notes.append("--load_trt has no effect: the paged flow runs Triton kernels in CUDA graphs, which a "
                         "TensorRT engine cannot replace (it cannot read the page pool)")
        return notes

    @classmethod
    def build_parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog="python -m light_tts.server.api_server",
            description="LightTTS: a streaming CosyVoice2 text-to-speech server. Flags are grouped by the stage "
                        "they configure; each says what it does on a GPU and on the CPU where that differs.")
        groups = {name: parser.add_argument_group(name) for name in GROUPS}
        for f in fields(cls):
            kwargs = {k: v for k, v in f.metadata.items() if k not in ("group", "default_text")}
            kwargs["help"] = f"{kwargs['help']} (default: {f.metadata['default_text'] or f.default})"
            group, flag = groups[f.metadata["group"]], f"--{f.name}"
            if f.type in ("bool", bool):
                # `--flag` alone means True; `--flag False` / `--flag 0` means False.
                group.add_argument(flag, type=str2bool, nargs="?", const=True, default=f.default, **kwargs)
            elif f.name == "mode":
                group.add_argument(flag, nargs="+", default=None, **kwargs)
            elif f.type.startswith("tuple"):  # repeatable (action="append"); argparse appends to a list
                group.add_argument(flag, default=None, **kwargs)
            else:
                group.add_argument(flag, type=_field_type(f.type), default=f.default, **kwargs)
        return parser

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> "ServerConfig":
        parser = cls.build_parser()
        values = vars(parser.parse_args(argv))
        for name in ("mode", "api_key", "model_dir", "voice_alias"):
            if values[name] is not None:
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except ValueError as e:  # a clear message and exit code 2, as for a malformed flag
            parser.error(str(e))

    def voice_aliases(self) -> dict[str, str]:
        """--voice_alias as alias -> saved voice id or name."""
        aliases: dict[str, str] = {}
        for spec in self.voice_alias or ():
            alias, _, target = spec.partition("=")
            alias, target = alias.strip(), target.strip()
            if not alias or not target or alias.startswith(VOICE_ID_PREFIX):
                raise ValueError(f"--voice_alias takes NAME=VOICE (NAME not starting with {VOICE_ID_PREFIX}), "
                                 f"got {spec!r}")
            if alias in aliases:
                raise ValueError(f"--voice_alias names {alias!r} twice")
            aliases[alias] = target
        return aliases

    def replace(self, **changes: Any) -> "ServerConfig":
        return dataclasses.replace(self, **changes)


def _field_type(annotation: str) -> Any:
    """`from __future__ import annotations` leaves types as strings; map them to argparse converters."""
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str}[base]
