"""The one server configuration: built from the command line once, validated, then passed to every process."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from light_tts.request_rules import MAX_TEXT_CHARS

DATA_TYPES = ("float16", "bfloat16", "float32")
ZMQ_MODES = ("ipc:///tmp/", "tcp://")
HOP_POLICIES = ("fixed", "growing")


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


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field that also carries its argparse help and extra add_argument kwargs."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass(frozen=True)
class ServerConfig:
    # Where the model is; with none, the launcher writes a tiny random model and serves it (noise audio).
    model_dir: str | None = _opt(None, "CosyVoice2 model directory; none = a tiny random model (audio is noise)")
    host: str = _opt("127.0.0.1", "address the HTTP server binds")
    port: int = _opt(8080, "HTTP port")
    httpserver_workers: int = _opt(1, "HTTP server worker processes (they share the port)")
    encode_process_num: int = _opt(1, "encode processes (text normalisation, prompt audio features)")
    decode_process_num: int = _opt(1, "decode processes (token2wav), each on its own ZMQ port")
    encode_paral_num: int = _opt(50, "requests an encode process takes from its queue per loop turn")
    gpt_paral_num: int = _opt(50, "new requests the LLM process admits per loop turn")
    decode_paral_num: int | None = _opt(None, "no effect (decode concurrency is --decode_max_batch_size); accepted "
                                              "for compatibility")
    decode_max_batch_size: int = _opt(8, "requests a decode process batches through token2wav at once")
    load_trt: bool = _opt(False, "run the flow estimator with TensorRT (GPU decode processes only)")
    decode_max_streams: int = _opt(0, "streams a decode process holds flow caches for at once; later ones wait "
                                      "(0: sized from free GPU memory, unbounded on the CPU)")
    hop_policy: str = _opt("growing", "streamed chunk sizes after the first: fixed (25 tokens, lowest latency) or "
                                      "growing (25 -> 50 -> 100, fewer chunks)", choices=HOP_POLICIES)
    decode_data_type: str = _opt("float16", "flow dtype in GPU decode processes (HiFT and CPU runs use float32)",
                                 choices=DATA_TYPES)
    # LLM engine
    max_total_token_num: int | None = _opt(None, "KV-cache capacity of the LLM in tokens (default: sized from "
                                                 "free GPU memory)")
    max_req_total_len: int = _opt(8192, "max prompt + generated tokens of one LLM request")
    batch_max_tokens: int | None = _opt(None, "max tokens in one prefill batch (default: max_req_total_len)")
    running_max_req_size: int = _opt(30, "request slots: concurrent requests in the whole server")
    graph_max_batch_size: int = _opt(16, "largest CUDA-graph decode batch")
    disable_cudagraph: bool = _opt(False, "run the LLM eagerly")
    data_type: str = _opt("float16", "LLM compute dtype (float32 is used on CPU)", choices=DATA_TYPES)
    mode: tuple[str, ...] | None = _opt(None, "no effect (kernels are chosen automatically); accepted for "
                                              "compatibility")
    disable_prefix_cache: bool = _opt(False, "do not share the KV cache of a voice's prompt between requests")
    kv_cache_mem_fraction: float = _opt(0.5, "share of the GPU memory left after warm-up that the LLM's KV cache "
                                             "takes (the decode processes use the rest); unused on the CPU")
    router_max_wait_tokens: int = _opt(8, "decode steps between admissions of new requests")
    # Transport and caches
    zmq_mode: str = _opt("ipc:///tmp/", "ZMQ transport between processes", choices=ZMQ_MODES)
    cache_capacity: int = _opt(200, "voices kept in the shared-memory voice cache (LRU)")
    # Request limits (ours; the defaults suit the CosyVoice2 prompt and sentence lengths)
    request_timeout_s: float = _opt(300.0, "a request running longer ends with a timeout error")
    max_text_chars: int = _opt(MAX_TEXT_CHARS, "longest tts_text / prompt_text accepted")
    max_prompt_wav_bytes: int = _opt(16 << 20, "largest prompt wav upload in bytes")
    max_prompt_seconds: float = _opt(30.0, "longest prompt audio accepted")
    # Runtime
    device: str = _opt("auto", "torch device for the LLM and decode processes: auto, cpu, cuda, cuda:N")
    cpu_threads: int = _opt(1, "torch threads per worker process (1 avoids oversubscribing small hosts)")
    shutdown_grace_s: float = _opt(3.0, "after a worker dies: seconds to fail requests and report unready, then exit")
    log_level: str = _opt("info", "logging level", choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        positive = ("httpserver_workers", "encode_process_num", "decode_process_num", "encode_paral_num",
                    "gpt_paral_num", "decode_max_batch_size",
                    "max_req_total_len", "running_max_req_size", "graph_max_batch_size", "router_max_wait_tokens",
                    "cache_capacity", "max_text_chars", "max_prompt_wav_bytes", "cpu_threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_paral_num is not None and self.decode_paral_num < 1:
            raise ValueError("--decode_paral_num must be >= 1")
        if not 0 < self.kv_cache_mem_fraction < 1:
            raise ValueError("--kv_cache_mem_fraction must be in (0, 1)")
        if self.decode_max_streams < 0:
            raise ValueError("--decode_max_streams must be >= 0")
        for name in ("batch_max_tokens", "max_total_token_num"):
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
        if self.request_timeout_s <= 0 or self.max_prompt_seconds <= 0 or self.shutdown_grace_s < 0:
            raise ValueError("--request_timeout_s and --max_prompt_seconds must be > 0, --shutdown_grace_s >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def ignored_flags(self) -> list[str]:
        """Startup notes for flags that are accepted for compatibility but change nothing."""
        notes = []
        if self.mode is not None:
            notes.append(f"--mode {' '.join(self.mode)} has no effect: kernels are chosen automatically")
        if self.decode_paral_num is not None:
            notes.append(f"--decode_paral_num {self.decode_paral_num} has no effect: decode concurrency is "
                         f"--decode_max_batch_size ({self.decode_max_batch_size})")
        return notes

    @classmethod
    def build_parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="python -m light_tts.server.api_server", description=__doc__)
        for f in fields(cls):
            kwargs = {k: v for k, v in f.metadata.items()}
            kwargs["help"] = f"{kwargs['help']} (default: {f.default})"
            flag = f"--{f.name}"
            if f.type in ("bool", bool):
                # `--flag` alone means True; `--flag False` / `--flag 0` means False.
                parser.add_argument(flag, type=str2bool, nargs="?", const=True, default=f.default, **kwargs)
            elif f.name == "mode":
                parser.add_argument(flag, nargs="+", default=None, **kwargs)
            else:
                parser.add_argument(flag, type=_field_type(f.type), default=f.default, **kwargs)
        return parser

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> "ServerConfig":
        namespace = cls.build_parser().parse_args(argv)
        values = vars(namespace)
        if values["mode"] is not None:
            values["mode"] = tuple(values["mode"])
        return cls(**values)

    def replace(self, **changes: Any) -> "ServerConfig":
        return dataclasses.replace(self, **changes)


def _field_type(annotation: str) -> Any:
    """`from __future__ import annotations` leaves types as strings; map them to argparse converters."""
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str}[base]
