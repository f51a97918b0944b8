"""The flow's pre-lookahead layer (upstream transformer/upsample_encoder.PreLookaheadLayer), shared by CosyVoice2 (in
its conformer encoder, 512 -> 512 -> 512) and CosyVoice3 (on the token embeddings, 80 -> 1024 -> 80)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreLookaheadLayer(nn.Module):
    """conv1 looks `lookahead` tokens ahead (right zero pad, or the context tokens), conv2 is causal; residual."""

    def __init__(self, channels: int, lookahead: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, hidden, lookahead + 1)
        self.conv2 = nn.Conv1d(hidden, channels, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, n, D), context (B, c <= lookahead, D), tail (B, hidden, 2): conv1's last 2 outputs before x (zeros
        at the utterance start) -> (B, n, D), the new tail."""
        h = torch.cat([x, context], dim=1).transpose(1, 2)  # (B, D, n + c)
        h = F.pad(h, (0, self.lookahead - context.shape[1]))
        h = torch.cat([tail, F.leaky_relu(self.conv1(h))], dim=2)  # (B, hidden, 2 + n)
        out = self.conv2(h).transpose(1, 2)
        return out + x, h[:, :, -tail.shape[2] :]
