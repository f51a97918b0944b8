"""Rotary embedding frequencies of a decoder body: the plain ones (Qwen2) or Llama 3's scaled ones.

Llama 3 scaling is not a long-context detail: it divides the low frequencies (wavelength above
original_max_position_embeddings / low_freq_factor) by `factor`, keeps the high ones (wavelength below
original_max_position_embeddings / high_freq_factor) and interpolates between, so 35 of Llama-3.2-3B's 64
frequencies change and every position rotates differently from the unscaled rope.
"""

from __future__ import annotations

import math

import torch

from light_tts.model_config import QwenConfig, RopeScaling


def rope_inv_freq(
    head_dim: int, theta: float, scaling: RopeScaling | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """[head_dim / 2] inverse frequencies (computed in float64, returned in `dtype`)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is not None:
        inv_freq = _llama3_scaled(inv_freq, scaling)
    return inv_freq.to(dtype)


def body_inv_freq(cfg: QwenConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, dtype)


def _llama3_scaled(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    old_len = s.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / s.low_freq_factor, old_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    # between the two wavelengths: a linear blend of the divided and the kept frequency
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)
