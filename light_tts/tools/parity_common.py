"""What the parity checks of every family share: a check's row, the relative error, the fixture files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

LOGPROB_TOL = MEL_TOL = 1e-4  # the fixture README's float32 CPU tolerances
AUDIO_TOL = 1e-3


@dataclass(frozen=True)
class Check:
    name: str
    error: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # NaN fails


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double().flatten(), ref.double().flatten()
    if ours.shape != ref.shape:
        return float("inf")
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-30))


def load_io(model_dir: Path, name: str) -> dict:
    return torch.load(model_dir / name, map_location="cpu", weights_only=False)
