"""Defaults sized to the host: what `--model_dir DIR` alone gets on a GPU host, without the tuning guide.

ServerConfig's own defaults suit a CPU host (a few slots, small decode batches). On a GPU host the launcher
replaces every flag of DERIVED that was not given on the command line with a value sized to the GPUs' memory
and compute, the host's cores and the request the flags bound, and prints each derived value at startup; a flag
given on the command line is always kept. The rules (derive_defaults) are pure: the host's facts come in as
HostFacts (read_host reads them from nvidia-smi and the CPU affinity).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from light_tts.server.runtime.config import DERIVED, ServerConfig

GIB = 1 << 30
SLOTS_PER_GPU = 512  # request slots per GPU: the measured real-time capacity of one H200 was 128-320 streams
MAX_SLOTS = 2048
REQUEST_KV_TOKENS = 800  # KV slots of a typical request: a 10-s prompt, its text and a 20-s sentence


@dataclass(frozen=True)
class HostFacts:
    num_gpus: int  # the GPUs the server places processes on (0: a CPU host)
    gpu_bytes: int  # memory of the smallest of them (0: unknown)
    has_fp8: bool  # they compute fp8 e4m3 (compute capability 8.9 and up)
    num_cpus: int  # cores this process may run on


def derive_defaults(cfg: ServerConfig, host: HostFacts) -> tuple[ServerConfig, list[str]]:
    """The config with the derived flags set (on a GPU host, flags not given), and one line per derived value."""
    if host.num_gpus == 0 or cfg.device == "cpu":
        return cfg, []
    slots = min(MAX_SLOTS, SLOTS_PER_GPU * host.num_gpus)
    if "running_max_req_size" in cfg.given:
        slots = cfg.running_max_req_size
    big_gpu = host.gpu_bytes == 0 or host.gpu_bytes >= 40 * GIB
    values: dict[str, tuple[object, str]] = {
        "httpserver_workers": (max(1, min(4, host.num_cpus // 8)), f"{host.num_cpus} cores"),
        "encode_process_num": (max(1, min(8, host.num_cpus // 4)), f"{host.num_cpus} cores"),
        "running_max_req_size": (slots, f"{SLOTS_PER_GPU} per GPU, {host.num_gpus} GPU(s)"),
        "decode_max_batch_size": (256 if big_gpu else 64, "chunks per decode step, by GPU memory"),
        "hop_policy": ("fixed", "1-s chunks: the lowest latency, the capacity runs' setting"),
        "max_total_token_num": (
            slots * REQUEST_KV_TOKENS,
            f"{REQUEST_KV_TOKENS} LLM KV tokens per request slot; the rest of the memory is the decode pool's",
        ),
        "flow_cache_dtype": (
            "fp8_e4m3" if host.has_fp8 else "auto",
            "fp8 flow pages (half the memory per stream)" if host.has_fp8 else "no fp8 on this GPU",
        ),
        "decode_mem_fraction": (0.8, "room for the encode processes' prompt models on the GPU"),
        "router_max_wait_tokens": (0, "a new request's prefill runs at the next LLM step"),
        "latency_lane": ("short_steps", "no early decode chunks while a first chunk is on its way"),
    }
    changes, lines = {}, []
    for name in DERIVED:
        value, why = values[name]
        if name in cfg.given:
            continue
        changes[name] = value
        lines.append(f"--{name} {value} ({why})")
    return cfg.replace(**changes), lines


def sized_to_host(cfg: ServerConfig) -> tuple[ServerConfig, list[str]]:
    """derive_defaults for this host (the launcher's step before it plans the processes)."""
    from light_tts.server.runtime.settings import count_gpus

    return derive_defaults(cfg, read_host(count_gpus(cfg)))


def read_host(num_gpus: int) -> HostFacts:
    """The facts of this host: the visible GPUs' memory and compute capability from nvidia-smi (no CUDA context
    in the launcher), the cores from the CPU affinity."""
    num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_gpus == 0:
        return HostFacts(0, 0, False, num_cpus)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        rows = {
            index.strip(): (int(mib) << 20, tuple(int(x) for x in cap.strip().split(".")))
            for index, mib, cap in (line.split(",") for line in out.strip().splitlines())
        }
        used = [rows[i] for i in (visible or sorted(rows, key=int))[:num_gpus]]
        return HostFacts(num_gpus, min(m for m, _ in used), all(cap >= (8, 9) for _, cap in used), num_cpus)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return HostFacts(num_gpus, 0, False, num_cpus)
