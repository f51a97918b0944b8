"""Which process serves which model on which device with what memory share: the topology, planned once by the
launcher (settings.build_settings) from the config, the models and the number of GPUs, and printed at startup.

LLM processes: --llm_replicas per model (data parallel; the encode process sends each request to the least
loaded replica of its model), ranked model by model. Decode processes are grouped by the models' decode group
key (model_set: identical flow/HiFT files and decode layout share a group); each group gets --decode_process_num
processes, numbered on across groups. Devices come from devices.GpuLayout (--llm_gpus, --decode_gpus,
--simulate_gpus; by default every LLM on cuda:0 and the decode processes round-robin over the other GPUs, or all
on the only one); without a GPU everything runs on the CPU, and encode processes always do. The memory flags are
per GPU: each LLM's KV cache takes --kv_cache_mem_fraction / (LLMs on its GPU) and each decode pool
--decode_mem_fraction / (decode processes on its GPU). Pure CPU code, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.devices import gpu_layout
from light_tts.server.runtime.model_set import ModelEntry

GIB = 1 << 30
CUDA_CONTEXT_BYTES = 1 << 29  # what a process's CUDA context and kernels take before any tensor (about 0.5 GiB)
MAX_FIXED_FRACTION = 0.8  # weights and contexts beyond this share of a GPU leave too little for the caches


@dataclass(frozen=True)
class ProcessPlan:
    stage: str  # encode, llm or decode
    rank: int
    models: tuple[str, ...]  # names of the models it serves
    device: str  # cpu or cuda:N
    memory_share: float  # its cache's share of its GPU's free memory (0 for encode)
    group: int = 0  # decode: its decode group; llm: the group its model decodes in


@dataclass(frozen=True)
class Topology:
    processes: tuple[ProcessPlan, ...]
    is_simulated: bool = False  # --simulate_gpus: the cuda:N devices are planned, and computed on the CPU

    def compute_device(self, stage: str, rank: int) -> str:
        """What the process's torch computes on: its planned device, or the CPU for a simulated GPU."""
        return "cpu" if self.is_simulated else self.plan_of(stage, rank).device

    def may_hold(self, stage: str, rank: int, model: str, llm_rank: int, decode_rank: int) -> bool:
        """Whether process (stage, rank) may hold a request to `model` that was sent to LLM replica `llm_rank` and
        decode process `decode_rank` (-1: not sent yet, so any of its model's may be receiving it now): the
        requests it may hold fail when it does."""
        if model not in self.plan_of(stage, rank).models:
            return False
        sent_to = {"llm": llm_rank, "decode": decode_rank}.get(stage)
        return sent_to is None or sent_to in (rank, -1)

    def llm_ranks_of(self, model: str) -> list[int]:
        """The LLM replicas serving `model`."""
        return [p.rank for p in self.processes if p.stage == "llm" and p.models == (model,)]

    def ranks(self, stage: str) -> list[int]:
        return [p.rank for p in self.processes if p.stage == stage]

    def count(self, stage: str) -> int:
        return len(self.ranks(stage))

    def plan_of(self, stage: str, rank: int) -> ProcessPlan:
        return next(p for p in self.processes if p.stage == stage and p.rank == rank)

    def decode_ranks_of_llm(self, llm_rank: int) -> list[int]:
        """The decode processes an LLM may send a request to: those of its model's decode group."""
        group = self.plan_of("llm", llm_rank).group
        return [p.rank for p in self.processes if p.stage == "decode" and p.group == group]

    def log_lines(self) -> list[str]:
        """One line per process, as the launcher prints them at startup."""
        simulated = " (simulated on the CPU)" if self.is_simulated else ""
        return [
            f"topology: {p.stage}{p.rank} serves {', '.join(p.models)} on {p.device}"
            + (simulated if p.device != "cpu" else "")
            + (f" (decode group {p.group})" if p.stage == "decode" else "")
            + (f", memory share {p.memory_share:.3g}" if p.device != "cpu" and p.memory_share else "")
            for p in self.processes
        ]


def decode_groups(models: Sequence[ModelEntry]) -> list[list[int]]:
    """Model indices per decode group, in order of each group's first model."""
    groups: dict[tuple[str, tuple[int | float, ...]], list[int]] = {}
    for i, entry in enumerate(models):
        groups.setdefault(entry.decode_group_key, []).append(i)
    return list(groups.values())


def plan(cfg: ServerConfig, models: Sequence[ModelEntry], num_gpus: int) -> Topology:
    """The topology for `num_gpus` visible GPUs; raises SystemExit when --llm_gpus / --decode_gpus name GPUs that
    do not exist."""
    if cfg.device not in ("auto", "cpu"):  # --device cuda[:N] puts every LLM and decode process there
        return _with_shares(cfg, _processes(cfg, models, lambda stage, index: cfg.device), False)
    layout = gpu_layout(cfg.llm_gpus, cfg.decode_gpus, cfg.simulate_gpus, num_gpus, cfg.device)
    device = layout.device_of if layout else lambda stage, index: "cpu"
    return _with_shares(cfg, _processes(cfg, models, device), bool(layout and layout.is_simulated))


def _processes(cfg: ServerConfig, models: Sequence[ModelEntry], device: Callable[[str, int], str]) -> list[ProcessPlan]:
    names = [m.name for m in models]
    groups = decode_groups(models)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    processes = [ProcessPlan("encode", r, tuple(names), "cpu", 0.0) for r in range(cfg.encode_process_num)]
    replicas = [(i, name) for i, name in enumerate(names) for _ in range(cfg.llm_replicas)]  # model by model
    processes += [
        ProcessPlan("llm", rank, (name,), device("llm", rank), 0.0, group_of[i])
        for rank, (i, name) in enumerate(replicas)
    ]
    rank = 0
    for g, members in enumerate(groups):
        for _ in range(cfg.decode_process_num):
            processes.append(
                ProcessPlan("decode", rank, tuple(names[i] for i in members), device("decode", rank), 0.0, g)
            )
            rank += 1
    return processes


def _with_shares(cfg: ServerConfig, processes: list[ProcessPlan], is_simulated: bool) -> Topology:
    fractions = {"llm": cfg.kv_cache_mem_fraction, "decode": cfg.decode_mem_fraction}
    # (stage, device) -> processes of that stage on that GPU (a CPU's caches are sized otherwise)
    sharing: dict[tuple[str, str], int] = {}
    for p in processes:
        key = (p.stage, p.device)
        sharing[key] = 1 if p.device == "cpu" else sharing.get(key, 0) + 1
    return Topology(
        tuple(
            p
            if p.stage == "encode"
            else ProcessPlan(
                p.stage, p.rank, p.models, p.device, fractions[p.stage] / sharing[(p.stage, p.device)], p.group
            )
            for p in processes
        ),
        is_simulated,
    )


def check_shares(topology: Topology) -> None:
    """Raises SystemExit when the memory shares of one stage on one GPU sum past the whole of what they divide."""
    sums: dict[tuple[str, str], float] = {}
    for p in topology.processes:
        if p.device != "cpu":
            sums[(p.stage, p.device)] = sums.get((p.stage, p.device), 0.0) + p.memory_share
    for (stage, device), total in sorted(sums.items()):
        if total > 1.0 + 1e-9:
            raise SystemExit(
                f"the {stage} processes on {device} are given memory shares that sum to {total:.3g}, "
                f"more than all of its free memory"
            )


def check_fits(topology: Topology, weight_bytes: dict[tuple[str, int], int], gpu_bytes: dict[str, int]) -> None:
    """Raises SystemExit when the processes planned on one GPU cannot all load there: their weights (file sizes,
    `weight_bytes` by (stage, rank)) and CUDA contexts would take more than MAX_FIXED_FRACTION of its memory
    (`gpu_bytes` by device), leaving the KV caches and decode pools too little; better now than an out-of-memory
    error while the server starts or serves."""
    for device, total in sorted(gpu_bytes.items()):
        on_it = [p for p in topology.processes if p.device == device and p.stage != "encode"]
        fixed = sum(weight_bytes.get((p.stage, p.rank), 0) + CUDA_CONTEXT_BYTES for p in on_it)
        if on_it and fixed > MAX_FIXED_FRACTION * total:
            names = ", ".join(f"{p.stage}{p.rank} ({'/'.join(p.models)})" for p in on_it)
            raise SystemExit(
                f"the models do not fit {device}: {names} need about {fixed / GIB:.1f} GiB for their "
                f"weights and CUDA contexts, more than {MAX_FIXED_FRACTION:.0%} of its "
                f"{total / GIB:.1f} GiB (the rest is for the KV caches and decode pools); serve fewer "
                f"models, or run on more GPUs"
            )
