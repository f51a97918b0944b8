"""The flow's CFM estimator (CausalConditionalDecoder) over packed virtual rows and the paged cache, one kernel per
op: the reference layout of the hot path (paged_flow.py runs it; fused_estimator.py runs its load-time tensors in
fused launches). The estimator's time embeddings depend on the CFM step only (every row shares the step's t), so
each resnet's time bias is computed once at load for all ten steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from light_tts.decode.flow.flow_cache import FlowCache
from light_tts.decode.flow.flow_inputs import FlowInputs
from light_tts.decode.flow.paged_encoder import conv_matrix
from light_tts.kernels.flow.flow_ops import add_layer_norm, flow_attention, gather_taps, layer_norm_mish, store_pages
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.models.cosyvoice2.flow.estimator import (
    CausalBlock1D,
    CausalConv1d,
    CausalResnetBlock1D,
    TransformerBlock,
    timestep_embedding,
)


class PagedEstimator:
    """CausalConditionalDecoder on packed virtual rows [Mv, C] (both CFG branches)."""

    def __init__(self, flow: Flow, time_steps: list[torch.Tensor]):
        est = flow.decoder.estimator
        self.est = est
        self.chunk = est.cfg.static_chunk_size
        self.convs = {
            m.slot: (conv_matrix(m), m.bias.detach(), m.in_channels)
            for m in est.modules()
            if isinstance(m, CausalConv1d)
        }
        self.res_convs = {
            id(m): (m.res_conv.weight.detach()[:, :, 0], m.res_conv.bias.detach())
            for m in est.modules()
            if isinstance(m, CausalResnetBlock1D)
        }
        self.qkv = {b.slot: b.attn1._qkv_weight().detach() for b in est.modules() if isinstance(b, TransformerBlock)}
        self.final_w = est.final_proj.weight.detach()[:, :, 0]
        self.final_b = est.final_proj.bias.detach()
        # resnet time biases per CFM step: mlp(time_mlp(embedding(t))), the same for every row of a step
        dtype = est.final_proj.weight.dtype
        self.time_bias: list[dict[int, torch.Tensor]] = []
        for t in time_steps:
            t_emb = est.time_mlp(timestep_embedding(t.reshape(1), est.cfg.in_channels).to(dtype))
            self.time_bias.append(
                {id(m): m.mlp(t_emb)[0].detach() for m in est.modules() if isinstance(m, CausalResnetBlock1D)}
            )

    def __call__(
        self, step: int, x: torch.Tensor, inputs: FlowInputs, cache: FlowCache, use_triton: bool | None
    ) -> torch.Tensor:
        """x [Mv, 320] (noisy mel, mu, speaker, condition) -> velocity [Mv, 80] of CFM step `step`."""
        est = self.est
        ctx = (step, inputs, cache, use_triton)
        ((resnet, blocks, down),) = est.down_blocks
        skip = self._attend(self._resnet(resnet, x, ctx), blocks, ctx)
        x = self._conv(down, skip, ctx)
        for resnet, blocks in est.mid_blocks:
            x = self._attend(self._resnet(resnet, x, ctx), blocks, ctx)
        ((resnet, blocks, up),) = est.up_blocks
        x = self._attend(self._resnet(resnet, torch.cat([x, skip], dim=1), ctx), blocks, ctx)
        final = est.final_block
        x = self._block(final, self._conv(final.block[0], self._conv(up, x, ctx), ctx), ctx)
        return F.linear(x, self.final_w, self.final_b)

    def _conv(self, conv: CausalConv1d, x: torch.Tensor, ctx) -> torch.Tensor:
        """The causal conv over packed rows: an im2col of its taps (the cached tails included), one matmul, and
        the rows' last inputs saved as their next tails (every estimator row has at least 2 new frames, so they
        are packed inputs)."""
        step, inputs, cache, use_triton = ctx
        weight, bias, channels = self.convs[conv.slot]
        tails = cache.est_tails[conv.slot][step].view(-1, channels)
        est = inputs.est
        cols = gather_taps(x, tails, est["tail_read"], est["taps"], use_triton)
        tails.index_copy_(0, est["save_dst"], x.index_select(0, est["save_src"]))
        return F.linear(cols, weight, bias)

    @staticmethod
    def _block(block: CausalBlock1D, y: torch.Tensor, ctx, add=None, residual=None) -> torch.Tensor:
        """LayerNorm and Mish after a CausalBlock1D's conv (+ the resnet's time bias or residual), fused."""
        return layer_norm_mish(y, block.block[2], add, residual, ctx[3])

    def _resnet(self, res: CausalResnetBlock1D, x: torch.Tensor, ctx) -> torch.Tensor:
        h = self._block(res.block1, self._conv(res.block1.block[0], x, ctx), ctx, add=self.time_bias[ctx[0]][id(res)])
        w, b = self.res_convs[id(res)]
        return self._block(res.block2, self._conv(res.block2.block[0], h, ctx), ctx, residual=F.linear(x, w, b))

    def _attend(self, x: torch.Tensor, blocks, ctx) -> torch.Tensor:
        """The transformer blocks of one U-Net stage; each residual add is fused with the LayerNorm after it."""
        step, inputs, cache, use_triton = ctx
        attn = inputs.est_attn
        h = blocks[0].norm1(x)
        for i, block in enumerate(blocks):
            m, heads, head_dim = x.shape[0], block.attn1.heads, block.attn1.head_dim
            qkv = F.linear(h, self.qkv[block.slot]).view(m, 3, heads, head_dim)
            kv, scale = cache.est_view(step, block.slot)
            store_pages(qkv[:, 1:], kv, scale, inputs.est_store, use_triton)
            o = flow_attention(
                qkv[:, 0],
                kv,
                scale,
                inputs.page_table,
                attn.rows,
                attn.work_row,
                attn.work_block,
                self.chunk,
                attn.block_m,
                use_triton,
            )
            out = block.attn1.to_out[0]
            x, h = add_layer_norm(x, F.linear(o.reshape(m, -1), out.weight), out.bias, block.norm3, use_triton)
            proj, ff_out = block.ff.net[0].proj, block.ff.net[2]
            f = F.linear(F.gelu(F.linear(h, proj.weight, proj.bias)), ff_out.weight)
            if i + 1 < len(blocks):
                x, h = add_layer_norm(x, f, ff_out.bias, blocks[i + 1].norm1, use_triton)
            else:
                x = x + f + ff_out.bias
        return x
