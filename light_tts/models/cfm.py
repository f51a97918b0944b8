"""Causal conditional flow matching (upstream flow_matching.CausalConditionalCFM, shared by the CosyVoice families):
Euler steps from a fixed noise to the mel, with classifier-free guidance, around the family's velocity estimator
(CosyVoice2's causal U-Net, CosyVoice3's DiT). An estimator is called as
estimator(x, mu, t, spks, cond, cache, streaming, num_pad) -> (velocity, new cache) on both CFG branches (2B rows,
conditioned first) and has empty_cache(rows)."""

from __future__ import annotations

import math

import torch
from torch import nn

from light_tts.model_config import CFMConfig


def chunk_mask(q_start: int, num_q: int, num_k: int, chunk_size: int, device: torch.device) -> torch.Tensor:
    """(num_q, num_k) bool: query at absolute position q_start+i sees key j. chunk_size 0 = full attention;
    otherwise a query sees every key before the end of its own chunk (all left chunks visible)."""
    if chunk_size <= 0:
        return torch.ones(num_q, num_k, dtype=torch.bool, device=device)
    q_pos = torch.arange(q_start, q_start + num_q, device=device)
    chunk_end = (torch.div(q_pos, chunk_size, rounding_mode="floor") + 1) * chunk_size
    return torch.arange(num_k, device=device)[None, :] < chunk_end[:, None]


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) -> (B, dim) sinusoidal embedding: [sin | cos] of scale * t * 10000^(-k/(dim/2-1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    emb = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((emb.sin(), emb.cos()), dim=-1)


NOISE_FRAMES = 50 * 300  # upstream draws 300 s of noise once; longer utterances are not supported


class CausalConditionalCFM(nn.Module):
    def __init__(self, cfg: CFMConfig, estimator: nn.Module, num_mels: int):
        super().__init__()
        if cfg.t_scheduler not in ("cosine", "linear"):
            raise ValueError(f"unknown CFM t_scheduler {cfg.t_scheduler!r}")
        self.cfg = cfg
        self.num_mels = num_mels
        self.estimator = estimator
        # Upstream: torch.manual_seed(0) then randn(1, 80, 15000) at construction; frame f always gets column f,
        # which is what makes chunked and whole-utterance runs agree.
        noise = torch.randn(1, self.num_mels, NOISE_FRAMES, generator=torch.Generator().manual_seed(0))
        self.register_buffer("rand_noise", noise, persistent=False)
        # Callable with the estimator's signature that runs it instead (an engine's CUDA graphs or TensorRT);
        # None: the module itself. A plain attribute, not a submodule, so the state dict is unchanged.
        self.runner = None

    def time_span(self, device: torch.device) -> torch.Tensor:
        t_span = torch.linspace(0, 1, self.cfg.n_timesteps + 1, device=device)
        if self.cfg.t_scheduler == "cosine":
            t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
        return t_span

    def euler_times(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each Euler step's t and dt, accumulated as `solve` does (t += dt, dt re-derived from the span: the same
        float rounding), for engines that precompute what depends on the step only."""
        t_span = self.time_span(device)
        t, dt = t_span[0:1], t_span[1] - t_span[0]
        times, dts = [], []
        for step in range(1, len(t_span)):
            times.append(t.clone())
            dts.append(dt.clone())
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return times, dts

    def empty_caches(self, batch: int) -> list:
        """One estimator cache per Euler step, each with 2*batch rows (conditioned, then unconditioned)."""
        return [self.estimator.empty_cache(2 * batch) for _ in range(self.cfg.n_timesteps)]

    def noise(self, start: int, m: int, b: int, num_pad: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """(B, 80, m): the fixed noise of frames [start - num_pad[b], +m) of each row (its real frame positions)."""
        if num_pad is None:
            if start + m > NOISE_FRAMES:
                raise ValueError(f"utterance of {start + m} mel frames exceeds the {NOISE_FRAMES}-frame noise")
            return self.rand_noise[:, :, start : start + m].to(dtype).expand(b, -1, -1)
        frames = (start - num_pad)[:, None] + torch.arange(m, device=num_pad.device)  # (B, m)
        if start + m > NOISE_FRAMES and int(frames.max()) >= NOISE_FRAMES:  # checked (a host sync) only near the end
            raise ValueError(f"utterance of {int(frames.max()) + 1} mel frames exceeds the {NOISE_FRAMES}-frame noise")
        return self.rand_noise[0][:, frames].transpose(0, 1).to(dtype)  # (80, B, m) -> (B, 80, m)

    def forward(
        self,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        caches: list,
        streaming: bool,
        num_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list]:
        """mu, cond (B, 80, m) for the frames after the cached ones, spks (B, 80) -> float32 mel (B, 80, m), new
        caches.
        num_pad (B,): left-padding frames of each row's caches (requests of different lengths in one batch)."""
        new_caches = []
        estimator = self.runner or self.estimator

        def estimate(step: int, x, mu, t, spks, cond, pad):
            v, cache = estimator(x, mu, t, spks, cond, caches[step], streaming, pad)
            new_caches.append(cache)
            return v

        x0 = self.noise(caches[0].num_frames, mu.shape[2], mu.shape[0], num_pad, torch.float32)
        return self.solve(x0, mu, spks, cond, num_pad, estimate), new_caches

    def solve(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        num_pad: torch.Tensor | None,
        estimate,
    ) -> torch.Tensor:
        """The Euler steps from noise x (B, 80, m), float32, with classifier-free guidance; estimate(step, x, mu,
        t, spks, cond, num_pad) gives the velocity of both CFG branches (2B rows, conditioned first)."""
        b = mu.shape[0]
        pad_in = None if num_pad is None else torch.cat([num_pad, num_pad])
        # the unconditioned CFG branch sees zero mu, speaker and prompt condition
        mu_in = torch.cat([mu, torch.zeros_like(mu)])
        spks_in = torch.cat([spks, torch.zeros_like(spks)])
        cond_in = torch.cat([cond, torch.zeros_like(cond)])
        rate = self.cfg.inference_cfg_rate
        t_span = self.time_span(mu.device)
        # t accumulates dt and dt is re-derived from the span, as upstream does (same float rounding);
        # x integrates in float32 whatever the estimator's dtype (as upstream around its fp16 TensorRT estimator)
        t, dt = t_span[0:1], t_span[1] - t_span[0]
        for step in range(1, len(t_span)):
            x_in = torch.cat([x, x]).to(mu.dtype)
            v = estimate(step - 1, x_in, mu_in, t.expand(2 * b), spks_in, cond_in, pad_in)
            v_cond, v_uncond = v[:b].float(), v[b:].float()
            x = x + dt * ((1.0 + rate) * v_cond - rate * v_uncond)
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x
