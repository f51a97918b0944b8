"""NSF harmonic source of the HiFT vocoder: sample-rate f0 -> one excitation channel, with the upstream random draws."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.model_config import HiFTConfig

# One generator for the whole batch (upstream's behaviour with the global RNG), one per request, or None (global RNG).
Generators = torch.Generator | Sequence[torch.Generator] | None


def _draw(batch: int, num_samples: int, dim: int, generator: torch.Generator | None, device: torch.device):
    """The three upstream draws, in upstream order and memory layout, for one generator.

    Upstream calls randn_like on a [B, T, dim] tensor whose memory is laid out as [B, dim, T] (it is a
    transposed interpolate output), so the noise is drawn in that layout; the last [B, T, 1] draw feeds an
    unused noise branch but is kept so that the stream of numbers continues as upstream's across chunks.
    Draws run on the generator's device: a CPU generator reproduces upstream's CPU numbers but the strided fill
    is serial (~13 ms per second of audio); a CUDA generator is the fast choice for serving.
    """
    if generator is not None:
        device = generator.device
    phase = torch.rand(batch, dim, generator=generator, device=device)
    noise = torch.empty(batch, dim, num_samples, device=device).transpose(1, 2).normal_(generator=generator)
    torch.empty(batch, num_samples, 1, device=device).normal_(generator=generator)
    return phase, noise


def draw_source_noise(batch: int, num_samples: int, dim: int, generators: Generators, device: torch.device):
    """Initial harmonic phases [B, dim] (column 0 zero) and additive noise [B, num_samples, dim] on `device`."""
    if generators is None or isinstance(generators, torch.Generator):
        phase, noise = _draw(batch, num_samples, dim, generators, device)
    else:
        if len(generators) != batch:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
        draws = [_draw(1, num_samples, dim, g, device) for g in generators]
        phase = torch.cat([p for p, _ in draws])
        noise = torch.cat([n for _, n in draws])
    phase[:, 0] = 0  # the fundamental starts at phase zero; only the overtones get a random start
    return phase.to(device), noise.to(device)


class HarmonicSource(nn.Module):
    """SourceModuleHnNSF2 + SineGen2 (the 24 kHz variant): sines of f0 and its overtones, integrated at the
    frame rate and linearly upsampled, voiced/unvoiced gated, plus noise, merged by `l_linear` and tanh."""

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.sampling_rate = cfg.sampling_rate
        self.upsample_scale = cfg.samples_per_frame
        self.sine_amp = cfg.nsf_alpha
        self.noise_std = cfg.nsf_sigma
        self.voiced_threshold = cfg.nsf_voiced_threshold
        self.num_harmonics = cfg.nb_harmonics + 1  # the fundamental plus nb_harmonics overtones
        self.register_buffer(
            "harmonics", torch.arange(1, self.num_harmonics + 1, dtype=torch.float32), persistent=False
        )
        self.l_linear = nn.Linear(self.num_harmonics, 1)

    def _sines(self, f0_harmonics: torch.Tensor, initial_phase: torch.Tensor) -> torch.Tensor:
        rad = (f0_harmonics / self.sampling_rate) % 1  # (B, T_s, H) cycles per sample
        rad[:, 0, :] = rad[:, 0, :] + initial_phase
        # The phase is integrated at the frame rate, then interpolated back up. Frame 0 reads samples 239 and 240,
        # so the initial phase added at sample 0 has no effect (as upstream); it is drawn only to keep the RNG stream.
        # Upstream passes scale_factor (not size), which sets both the output length and the sampling positions.
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.upsample_scale, mode="linear").transpose(1, 2)
        phase = torch.cumsum(rad, dim=1) * 2 * math.pi  # (B, T, H)
        phase = F.interpolate(
            phase.transpose(1, 2) * self.upsample_scale, scale_factor=self.upsample_scale, mode="linear"
        )
        return torch.sin(phase.transpose(1, 2))  # (B, T_s, H)

    def forward(self, f0: torch.Tensor, initial_phase: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f0 [B, T_s, 1] in Hz at the sample rate, the draws of draw_source_noise -> excitation [B, T_s, 1]."""
        sines = self._sines(f0 * self.harmonics, initial_phase.to(f0.dtype)) * self.sine_amp
        is_voiced = (f0 > self.voiced_threshold).to(f0.dtype)
        # Unvoiced frames get noise of about the sine amplitude instead of the harmonics.
        noise_amp = is_voiced * self.noise_std + (1 - is_voiced) * self.sine_amp / 3
        excitation = sines * is_voiced + noise_amp * noise.to(f0.dtype)
        return torch.tanh(self.l_linear(excitation))
