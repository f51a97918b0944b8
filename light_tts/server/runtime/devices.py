"""Which GPU each LLM and decode process computes on: --llm_gpus, --decode_gpus and --simulate_gpus, read once by
the launcher's placement (placement.py) into a GpuLayout. Pure CPU code, no torch: the launcher passes the
number of visible GPUs in.

Rules. LLM processes (ordered model by model, replica by replica) take the --llm_gpus in turn, so a model's
replicas land on different GPUs; decode processes take the --decode_gpus in turn, so several per GPU when there
are more processes than GPUs. Defaults keep the old placement: the LLMs on GPU 0, the decode processes on the
other GPUs, or on GPU 0 too when it is the only one. --simulate_gpus N plans for N GPUs and runs every process on
the CPU: the topology, the memory shares and the routing are those of an N-GPU host, for tests without one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuLayout:
    num_gpus: int  # visible, or simulated
    llm_gpus: tuple[int, ...]
    decode_gpus: tuple[int, ...]
    is_simulated: bool  # planned as GPUs, computed on the CPU

    def device_of(self, stage: str, index: int) -> str:
        """The planned device of the index-th process of a stage (encode processes always run on the CPU)."""
        if stage == "encode":
            return "cpu"
        gpus = self.llm_gpus if stage == "llm" else self.decode_gpus
        return f"cuda:{gpus[index % len(gpus)]}"


def parse_gpu_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    """'0,1' or '0 1' -> (0, 1); None stays None. Raises ValueError naming the flag on anything else."""
    if text is None:
        return None
    items = text.replace(",", " ").split()
    if not items or not all(i.isdigit() for i in items):
        raise ValueError(f"--{flag} must list GPU indices like 0,1, got {text!r}")
    gpus = tuple(int(i) for i in items)
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--{flag} lists a GPU twice: {text!r}")
    return gpus


def gpu_layout(
    llm_gpus: str | None, decode_gpus: str | None, simulate_gpus: int, num_visible: int, device: str
) -> GpuLayout | None:
    """The layout, or None when every process runs on the CPU (no GPU, or --device cpu). Raises SystemExit with
    the reason when the lists name GPUs that do not exist."""
    llm, dec = parse_gpu_list(llm_gpus, "llm_gpus"), parse_gpu_list(decode_gpus, "decode_gpus")
    num = simulate_gpus or num_visible
    if device == "cpu" or num == 0:
        if llm or dec:
            why = "--device cpu" if device == "cpu" else "no GPU is visible (pass --simulate_gpus N to test)"
            raise SystemExit(f"--llm_gpus / --decode_gpus need GPUs, but {why}")
        return None
    llm = llm or (0,)
    dec = dec or (tuple(g for g in range(num) if g not in llm) or tuple(range(num)))
    for flag, gpus in (("llm_gpus", llm), ("decode_gpus", dec)):
        missing = [g for g in gpus if g >= num]
        if missing:
            raise SystemExit(
                f"--{flag} names GPU {missing[0]}, but this host has {num} (0..{num - 1})"
                + (" simulated" if simulate_gpus else "")
            )
    return GpuLayout(num_gpus=num, llm_gpus=llm, decode_gpus=dec, is_simulated=simulate_gpus > 0)


def pick_least_loaded(ranks: list[int], loads: dict[int, int], turn: int) -> int:
    """The LLM replica a request goes to: the least loaded of `ranks` (requests each holds); ties go round-robin
    by `turn` (a counter the caller advances), so a burst that arrives before any load is published spreads."""
    if not ranks:
        raise ValueError("no LLM process to pick from")
    least = min(loads.get(r, 0) for r in ranks)
    tied = [r for r in ranks if loads.get(r, 0) == least]
    return tied[turn % len(tied)]
