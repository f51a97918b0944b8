"""F0 predictor of the HiFT vocoder: mel [B,80,T] -> non-negative pitch in Hz [B,T], one value per mel frame."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from light_tts.model_config import F0PredictorConfig


class ConvRNNF0Predictor(nn.Module):
    """Five weight-normed k=3 convs with ELU, then a per-frame linear head.

    The ELUs sit between the convs inside one nn.Sequential so that the conv indices (0, 2, 4, 6, 8)
    match the released `f0_predictor.condnet.{i}` keys.
    """

    def __init__(self, cfg: F0PredictorConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = cfg.in_channels
        for _ in range(5):
            layers.append(weight_norm(nn.Conv1d(in_channels, cfg.cond_channels, kernel_size=3, padding=1)))
            layers.append(nn.ELU())
            in_channels = cfg.cond_channels
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cfg.cond_channels, cfg.num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.condnet(mel).transpose(1, 2)  # (B, T, C)
        return self.classifier(x).squeeze(-1).abs()  # (B, T)
