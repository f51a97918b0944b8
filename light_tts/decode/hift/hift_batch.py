"""Stacks per-request HiFT streaming states into one batch and splits them back (rows are independent: each request
draws its noise from its own generator or key)."""

from __future__ import annotations

import torch

from light_tts.models.cosyvoice2.hift.streaming import HiFTStreamState


def stack_hift_states(states: list[HiFTStreamState]) -> HiFTStreamState:
    """All states of a batch are fresh (None) or all carry their overlap (equal shapes)."""
    if states[0].mel is None:
        return HiFTStreamState()
    return HiFTStreamState(
        mel=torch.cat([s.mel for s in states]),
        source=torch.cat([s.source for s in states]),
        speech=torch.cat([s.speech for s in states]),
    )


def split_hift_state(batched: HiFTStreamState, num_rows: int) -> list[HiFTStreamState]:
    if batched.mel is None:
        return [HiFTStreamState() for _ in range(num_rows)]
    return [
        HiFTStreamState(mel=batched.mel[r : r + 1], source=batched.source[r : r + 1], speech=batched.speech[r : r + 1])
        for r in range(num_rows)
    ]
