"""The decode path of SNAC 24 kHz (hubertsiuzdak/snac_24khz): three codebooks of codes -> 24 kHz audio.

quantizer.from_codes (per codebook: embedding 4096 x 8 -> 1x1 conv -> repeat stride times; summed) then the
decoder (depthwise conv k7, 1x1 conv, four upsampling blocks, Snake, conv k7 -> 1, tanh). Parameter names are
the released ones with weight norm folded (`...parametrizations.weight.original0/1` or the older `weight_g/_v`
become `weight`, computed as torch's weight norm does), so a checkpoint loads strictly; the encoder and the
quantizer's in_proj are not needed to decode and are left out.

Noise: each upsampling block adds noise [B, 1, T] * conv1x1(x). SNAC draws it from the global RNG
(torch.randn); here it is an input, so that a request's audio does not depend on its batch:
`counter_noise(seeds, counters)` derives it from each row's (seed, window), on the device and inside CUDA graphs;
`torch_noise()` draws torch.randn in SNAC's order (parity with the snac package); None adds none.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.errors import ModelDirError
from light_tts.kernels.codec.snac_ops import noise_key_ref, normal_ref
from light_tts.models.orpheus.config import SNACConfig

NoiseFn = Callable[[int, int, int], torch.Tensor]  # (block index, batch, length) -> [B, 1, T]


class Snake1d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SNAC's expression, term for term: x + sin(alpha x)^2 / (alpha + 1e-9)
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            nn.Conv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation, groups=groups),
            Snake1d(dim),
            nn.Conv1d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)  # 'same' padding: no crop


class NoiseBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Conv1d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + noise * self.linear(x)


class DecoderBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int, groups: int):
        super().__init__()
        # the indices are the released keys: block.0 Snake, .1 transposed conv, .2 noise, .3-.5 residual units
        self.block = nn.Sequential(
            Snake1d(in_dim),
            nn.ConvTranspose1d(
                in_dim, out_dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2), output_padding=stride % 2
            ),
            NoiseBlock(out_dim),
            *(ResidualUnit(out_dim, d, groups) for d in (1, 3, 9)),
        )

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.block[1](self.block[0](x))
        x = self.block[2](x, noise)
        for unit in self.block[3:]:
            x = unit(x)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: SNACConfig):
        super().__init__()
        latent, channels = cfg.latent, cfg.decoder_dim
        layers: list[nn.Module] = [
            nn.Conv1d(latent, latent, 7, padding=3, groups=latent),
            nn.Conv1d(latent, channels, 1),
        ]
        for i, stride in enumerate(cfg.decoder_rates):
            out_dim = channels // 2 ** (i + 1)
            layers.append(DecoderBlock(channels // 2**i, out_dim, stride, out_dim))
        layers += [Snake1d(out_dim), nn.Conv1d(out_dim, 1, 7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.num_blocks = len(cfg.decoder_rates)

    def forward(self, x: torch.Tensor, noise_fn: NoiseFn | None) -> torch.Tensor:
        x = self.model[1](self.model[0](x))
        for i in range(self.num_blocks):
            block = self.model[2 + i]
            length = x.shape[-1] * block.block[1].stride[0]
            noise = None if noise_fn is None else noise_fn(i, x.shape[0], length)
            x = block(x, noise)
        for layer in self.model[2 + self.num_blocks :]:
            x = layer(x)
        return x


class VectorQuantize(nn.Module):
    """The decode side of one codebook: lookup and out_proj (in_proj is encoder-only)."""

    def __init__(self, cfg: SNACConfig, stride: int):
        super().__init__()
        self.stride = stride
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)
        self.out_proj = nn.Conv1d(cfg.codebook_dim, cfg.latent, 1)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        z = self.out_proj(F.embedding(codes, self.codebook.weight).transpose(1, 2))  # (B, latent, T_i)
        # each step `stride` times (repeat_interleave as views: no host sync under CUDA graph capture)
        return z.unsqueeze(-1).expand(*z.shape, self.stride).flatten(2)


class ResidualVectorQuantize(nn.Module):
    def __init__(self, cfg: SNACConfig):
        super().__init__()
        self.quantizers = nn.ModuleList(VectorQuantize(cfg, s) for s in cfg.vq_strides)


class SNACDecoder(nn.Module):
    def __init__(self, cfg: SNACConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = ResidualVectorQuantize(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, codes: list[torch.Tensor], noise_fn: NoiseFn | None = None) -> torch.Tensor:
        """codes [B, F], [B, 2F], [B, 4F] (int) -> audio [B, 1, F * samples_per_frame] in (-1, 1)."""
        z = sum(q.from_codes(c.long()) for q, c in zip(self.quantizer.quantizers, codes))
        return self.decoder(z, noise_fn)

    @classmethod
    def from_state_dict(cls, cfg: SNACConfig, sd: dict[str, torch.Tensor], source: str) -> SNACDecoder:
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device="cpu")
        folded = fold_weight_norm(sd)
        own = model.state_dict()
        missing = sorted(set(own) - set(folded))
        misshapen = sorted(k for k in set(own) & set(folded) if own[k].shape != folded[k].shape)
        if missing or misshapen:
            raise ModelDirError(
                f"{source} does not match the SNAC config: missing {missing[:5]}, misshapen {misshapen[:5]}"
            )
        model.load_state_dict({k: folded[k].float() for k in own})
        return model.eval().requires_grad_(False)


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weight = g * v / ||v|| (norm over every dim but 0), for both key styles; other keys pass through."""
    out, pairs = {}, {}
    for key, value in sd.items():
        for g_suffix, v_suffix in (
            (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
            (".weight_g", ".weight_v"),
        ):
            if key.endswith(g_suffix) or key.endswith(v_suffix):
                is_g = key.endswith(g_suffix)
                base = key[: -len(g_suffix if is_g else v_suffix)]
                pairs.setdefault(base, {})["g" if is_g else "v"] = value
                break
        else:
            out[key] = value
    for base, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise ModelDirError(f"weight norm of {base} lacks its {'g' if 'v' in gv else 'v'} half")
        out[base + ".weight"] = torch._weight_norm(gv["v"].float(), gv["g"].float(), 0)
    return out


def torch_noise() -> NoiseFn:
    """SNAC's own noise: torch.randn((B, 1, T)) from the global RNG, block by block."""
    return lambda block, batch, length: torch.randn(batch, 1, length)


def counter_noise(seeds: torch.Tensor, counters: torch.Tensor) -> NoiseFn:
    """Noise of row b from (seeds[b], counters[b]) only ([B] int64 device tensors): standard normal by Box-Muller
    on hashed 24-bit uniforms; the same row gets the same noise alone or in any batch."""

    def noise(block: int, batch: int, length: int) -> torch.Tensor:
        return normal_ref(noise_key_ref(seeds, counters, block)[:batch], length)[:, None, :]

    return noise
