"""The causal layers of CosyVoice3's HiFT (upstream transformer/convolution.py causal convs, the causal ResBlock
and CausalConvRNNF0Predictor). Parameter names follow the released hift.pt; weight norm in the parametrization form.

A causal conv pads (kernel - 1) * dilation frames: zeros on the left, or, looking ahead, on the right when the
input is final (finalize) and none otherwise (then its last frames are the right context and the output is
shorter by the padding), as upstream's CausalConv1d(causal_type='right') does with its cache argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from light_tts.model_config import F0PredictorConfig
from light_tts.models.cosyvoice2.hift.generator import ResBlock, Snake


class CausalConv1d(nn.Conv1d):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, looks_ahead: bool = False
    ):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.padding_frames = (kernel_size - 1) * dilation
        self.looks_ahead = looks_ahead

    def forward(self, x: torch.Tensor, finalize: bool = True) -> torch.Tensor:
        if not self.looks_ahead:
            return super().forward(F.pad(x, (self.padding_frames, 0)))
        return super().forward(F.pad(x, (0, self.padding_frames)) if finalize else x)


class CausalUpsample(nn.Conv1d):
    """Nearest upsampling by `stride`, then a causal conv (kernel k, k - 1 frames of left zeros)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.scale = stride  # (the conv itself has stride 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat_interleave(self.scale, dim=2)
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class CausalDownsample(nn.Conv1d):
    """A strided conv (kernel 2 * stride) after stride - 1 frames of left zeros."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, 2 * stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.stride[0] - 1, 0)))


class CausalResBlock(ResBlock):
    """Three (Snake, dilated causal conv, Snake, causal conv) residual steps (ResBlock(causal=True) upstream)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        nn.Module.__init__(self)
        self.convs1 = nn.ModuleList(weight_norm(CausalConv1d(channels, channels, kernel_size, d)) for d in dilations)
        self.convs2 = nn.ModuleList(weight_norm(CausalConv1d(channels, channels, kernel_size)) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)


class CausalF0Predictor(nn.Module):
    """CausalConvRNNF0Predictor: a k=4 conv looking 3 frames ahead, 4 causal k=3 convs, ELU after each, a linear
    head, abs. Upstream runs it in float64 (weights formed in float64 from float64 g and v): CausalHiFT keeps it so."""

    def __init__(self, cfg: F0PredictorConfig):
        super().__init__()
        c = cfg.cond_channels
        layers: list[nn.Module] = [weight_norm(CausalConv1d(cfg.in_channels, c, 4, looks_ahead=True)), nn.ELU()]
        for _ in range(4):
            layers += [weight_norm(CausalConv1d(c, c, 3)), nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # convs at 0, 2, 4, 6, 8 as the released keys
        self.classifier = nn.Linear(c, cfg.num_class)

    @property
    def lookahead(self) -> int:
        return self.condnet[0].padding_frames

    def forward(self, mel: torch.Tensor, finalize: bool = True) -> torch.Tensor:
        """mel [B, 80, T] -> f0 [B, T] (finalize) or [B, T - 3] (the last 3 frames are right context only)."""
        x = self.condnet[0](mel, finalize)
        for layer in self.condnet[1:]:
            x = layer(x)
        return self.classifier(x.transpose(1, 2)).squeeze(-1).abs()
