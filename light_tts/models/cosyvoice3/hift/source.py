"""The harmonic source of CosyVoice3's HiFT (upstream SourceModuleHnNSF + SineGen2 with causal=True) and its fixed
noise tables.

Per mel frame t (480 samples), harmonics k = 1..9:
  rad_t,k   = (f0_t * k / 24000) mod 1                      (cycles per sample; the frame's samples are equal)
  phase_t,k = cumsum_{u <= t} rad_u,k * 2 pi                  (upstream: a linear resampling to the frame rate,
                                                              exact here, a float32 cumsum accumulated in float64)
  sine      = 0.1 sin(480 phase_t,k) on every sample of frame t (nearest upsampling of phase * 480)
  noise     = (0.003 if f0_t > 10 else 0.1 / 3) * table[sample, k]   (a fixed UNIFORM table, by absolute sample)
  source    = tanh(l_linear(sine * voiced + noise))
so a frame's source depends on its f0, the phase accumulated before it and its absolute position: streaming carries
the float64 accumulator (SourceState) instead of re-running from the utterance start. The initial-phase table has
no effect (the frame-rate resampling never reads sample 0) and is not kept.

Tables: upstream draws them from the global generator at construction, after the CFM's manual_seed(0) and its
noise, in its build order (flow token embedding and speaker affine inits, the f0 predictor's inits, the initial
phases, then the [1, 7200000, 9] table); replaying those draws (noise_table) gives the same numbers, and a CPU
generator draws a table's rows in order, so any prefix of it is drawn alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from light_tts.models.cfm import NOISE_FRAMES
from light_tts.models.cosyvoice3.config import CausalHiFTConfig, DiTFlowConfig


def _replay_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> None:
    """The draws of a Linear/Conv init (kaiming_uniform_ with a=sqrt(5), then the bias): same count and order."""
    bound = 1 / math.sqrt(fan_in)
    torch.empty(shape).uniform_(-bound, bound, generator=generator)
    torch.empty(shape[0]).uniform_(-bound, bound, generator=generator)


class NoiseTable:
    """Upstream's harmonic noise table [samples, harmonics], drawn on demand in whole seconds from the replayed
    generator (the rows drawn so far stay; more are appended as a longer utterance needs them)."""

    def __init__(self, flow: DiTFlowConfig, hift: CausalHiFTConfig):
        g = torch.Generator().manual_seed(0)
        torch.randn(1, flow.output_size, NOISE_FRAMES, generator=g)  # the CFM's noise
        torch.empty(flow.vocab_size, flow.input_size).normal_(generator=g)  # input_embedding
        _replay_init((flow.output_size, flow.spk_embed_dim), flow.spk_embed_dim, g)  # spk_embed_affine_layer
        f0 = hift.f0_predictor
        _replay_init((f0.cond_channels, f0.in_channels, 4), f0.in_channels * 4, g)
        for _ in range(4):
            _replay_init((f0.cond_channels, f0.cond_channels, 3), f0.cond_channels * 3, g)
        _replay_init((f0.num_class, f0.cond_channels), f0.cond_channels, g)
        self.num_harmonics = hift.nb_harmonics + 1
        torch.rand(1, self.num_harmonics, generator=g)  # the initial phases (no effect)
        self.generator, self.sample_rate = g, hift.sampling_rate
        self.table = torch.zeros(0, self.num_harmonics)

    def grow(self, num_samples: int) -> torch.Tensor:
        """The table's first num_samples rows [num_samples, harmonics] (CPU float32)."""
        if num_samples > len(self.table):
            seconds = -(-(num_samples - len(self.table)) // self.sample_rate)
            more = torch.rand(seconds * self.sample_rate, self.num_harmonics, generator=self.generator)
            self.table = torch.cat([self.table, more])
        return self.table[:num_samples]


@dataclass
class SourceState:
    """A stream's source context: the float64 phase accumulator of its first `num_frames` frames (per harmonic)."""

    accumulated: torch.Tensor  # (B, harmonics) float64: sum of rad over frames [0, num_frames)
    num_frames: int = 0


class CausalSource(nn.Module):
    """SourceModuleHnNSF(causal=True) with SineGen2: frame-rate f0 -> sample-rate excitation [B, 1, T * 480]."""

    def __init__(self, cfg: CausalHiFTConfig):
        super().__init__()
        self.sample_rate = cfg.sampling_rate
        self.samples_per_frame = cfg.samples_per_frame
        self.sine_amp, self.noise_std, self.voiced_threshold = cfg.nsf_alpha, cfg.nsf_sigma, cfg.nsf_voiced_threshold
        self.num_harmonics = cfg.nb_harmonics + 1
        self.register_buffer(
            "harmonics", torch.arange(1, self.num_harmonics + 1, dtype=torch.float32), persistent=False
        )
        self.l_linear = nn.Linear(self.num_harmonics, 1)

    def new_state(self, batch: int, device: torch.device) -> SourceState:
        return SourceState(torch.zeros(batch, self.num_harmonics, dtype=torch.float64, device=device))

    def phases(self, f0: torch.Tensor, state: SourceState) -> torch.Tensor:
        """f0 [B, T] (float32, frames state.num_frames..) -> the accumulated cycles of those frames [B, T, H] (float32,
        as upstream's float32 cumsum rounds them); advances `state`."""
        rad = torch.remainder(f0[..., None] * self.harmonics / self.sample_rate, 1)  # [B, T, H]
        # torch's CPU cumsum accumulates float32 in float64: continue the same sum from the carried accumulator
        acc = torch.cumsum(torch.cat([state.accumulated[:, None], rad.double()], dim=1), dim=1)[:, 1:]
        state.accumulated, state.num_frames = acc[:, -1], state.num_frames + f0.shape[1]
        return acc.float()

    def forward(self, f0: torch.Tensor, cycles: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f0 [B, T], accumulated cycles [B, T, H], table rows of these samples [T * 480, H] -> source [B, 1, T*480]."""
        phase = cycles * 2 * math.pi * self.samples_per_frame  # upstream: cumsum * 2 * pi, then * upsample_scale
        sines = torch.sin(phase).repeat_interleave(self.samples_per_frame, dim=1) * self.sine_amp  # [B, Ts, H]
        f0_samples = f0.repeat_interleave(self.samples_per_frame, dim=1)[..., None]  # [B, Ts, 1]
        voiced = (f0_samples > self.voiced_threshold).float()
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        excitation = sines * voiced + noise_amp * noise
        return torch.tanh(self.l_linear(excitation)).transpose(1, 2)
