"""SNACDecoder's forward with counter noise, its decoder blocks in fused launches (kernels/codec/snac_ops.py):
per upsampling block one Snake launch, the transposed conv (cuDNN), and four 1x1 convs as GEMMs, each followed by
one launch that adds it in and runs the next residual unit's Snake, depthwise conv and Snake. ~55 launches per
decode against ~650 for the module graph (~360 of them the counter noise's integer hashing), each activation read
and written about a third as often.

The same function as SNACDecoder.forward(codes, counter_noise(seeds, counters)) in float32, to rounding (the
GEMMs sum in another order; the tests compare the two under Triton's interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from light_tts.kernels.codec.snac_ops import head_triton, snake_in_triton, unit_in_triton
from light_tts.models.orpheus.snac import SNACDecoder


@dataclass
class Unit:
    alpha1: torch.Tensor  # [C]
    dw_weight: torch.Tensor  # [C, 7]
    dw_bias: torch.Tensor  # [C]
    alpha2: torch.Tensor  # [C]
    pw_weight: torch.Tensor  # [C, C] (the 1x1 conv)
    pw_bias: torch.Tensor  # [C]
    dilation: int


@dataclass
class Block:
    alpha: torch.Tensor  # [Cin]
    up: torch.nn.ConvTranspose1d
    noise_weight: torch.Tensor  # [C, C]
    units: list[Unit]


class FusedSNAC:
    """Views of a SNACDecoder's weights in the kernels' layouts (the module keeps owning them)."""

    def __init__(self, model: SNACDecoder):
        self.model = model
        layers = model.decoder.model
        self.blocks = [self._block(layers[2 + i]) for i in range(model.decoder.num_blocks)]
        snake, conv = layers[2 + model.decoder.num_blocks], layers[3 + model.decoder.num_blocks]
        self.head_alpha = snake.alpha.detach().flatten().contiguous()
        self.head_weight = conv.weight.detach()[0].contiguous()  # [C, 7]
        self.head_bias = float(conv.bias.detach()[0])

    @staticmethod
    def _block(block) -> Block:
        units = []
        for unit in block.block[3:]:
            snake1, dw, snake2, pw = unit.block
            units.append(
                Unit(
                    snake1.alpha.detach().flatten().contiguous(),
                    dw.weight.detach()[:, 0].contiguous(),
                    dw.bias.detach().contiguous(),
                    snake2.alpha.detach().flatten().contiguous(),
                    pw.weight.detach()[:, :, 0].contiguous(),
                    pw.bias.detach().contiguous(),
                    dw.dilation[0],
                )
            )
        noise_weight = block.block[2].linear.weight.detach()[:, :, 0].contiguous()
        return Block(block.block[0].alpha.detach().flatten().contiguous(), block.block[1], noise_weight, units)

    def __call__(self, codes: list[torch.Tensor], seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
        """codes [B, F], [B, 2F], [B, 4F]; seeds, counters [B] int64 -> audio [B, F * samples_per_frame]."""
        model = self.model
        z = sum(q.from_codes(c.long()) for q, c in zip(model.quantizer.quantizers, codes))
        layers = model.decoder.model
        r, h, h_bias = layers[1](layers[0](z)).contiguous(), None, None
        for i, block in enumerate(self.blocks):
            y = snake_in_triton(r, h, h_bias, block.alpha)
            up = block.up
            r = F.conv_transpose1d(
                y, up.weight, up.bias, up.stride, up.padding, up.output_padding
            ).contiguous()  # (B, C, T * stride)
            h, h_bias, noise = torch.matmul(block.noise_weight, r), None, (seeds, counters, i)
            for unit in block.units:
                r, z = unit_in_triton(
                    r, h, h_bias, noise, unit.alpha1, unit.dw_weight, unit.dw_bias, unit.alpha2, unit.dilation
                )
                h, h_bias, noise = torch.matmul(unit.pw_weight, z), unit.pw_bias, None
        return head_triton(r, h, h_bias, self.head_alpha, self.head_weight, self.head_bias)
