"""The CFM estimator and its ten Euler steps in fused launches: the same arithmetic as paged_estimator.py and
its loop (equal in float32 to float rounding), in about a third of the kernels.

Per transformer block three launches instead of about ten: the QKV projection that stores the new keys/values in
their pages (kernels/flow/flow_qkv_store.py), the paged attention (its flash-decoding partials left unmerged), and the
rest of the block (kernels/flow/flow_block_tail.py: merge, out-projection, residual, norm, feed-forward, residual, the
next block's norm). Per causal conv one launch (kernels/flow/flow_tap_conv.py: im2col gathered on the fly, norm, Mish,
time bias or the resnet's 1x1 residual, the first block's norm, and the previous conv's tail save).

What the ten steps and the two CFG branches share is computed once: the estimator input's mu, speaker and
condition columns (the unconditioned branch's are zeros) are written once per pass, and each step's last launch
(kernels/flow/flow_cfm_step.py) projects both branches, applies the guided Euler update and writes x into the next
step's input; the resnets' time biases depend on the step only and are made at load (PagedEstimator). Nothing
else is shared: every key/value of a step and branch depends on that step's x.
"""

from __future__ import annotations

import torch

from light_tts.decode.flow.flow_cache import FlowCache
from light_tts.decode.flow.flow_inputs import FlowInputs
from light_tts.decode.flow.paged_estimator import PagedEstimator
from light_tts.kernels.flow.flow_ops import attention_partials, block_tail, cfm_step, qkv_store, save_rows, tap_conv
from light_tts.models.cosyvoice2.flow.estimator import CausalConv1d, CausalResnetBlock1D


class _Call:
    """One estimator call: its step, inputs and the conv tail save not done yet (done by the next launch)."""

    def __init__(self, est: PagedEstimator, step: int, inputs: FlowInputs, cache: FlowCache, use_triton):
        self.est, self.step, self.inputs, self.cache, self.use_triton = est, step, inputs, cache, use_triton
        self.pending = None

    def conv(self, conv: CausalConv1d, x: torch.Tensor, norm=None, add=None, res=None, next_norm=None):
        weight, bias, channels = self.est.convs[conv.slot]
        tails = self.cache.est_tails[conv.slot][self.step].view(-1, channels)
        e = self.inputs.est
        out, out_n = tap_conv(
            x, tails, e["tail_read"], e["taps"], weight, bias, norm, add, res, next_norm, self.pending, self.use_triton
        )
        self.pending = (x, tails, e["save_src"], e["save_dst"])
        return out, out_n

    def resnet(self, res: CausalResnetBlock1D, x: torch.Tensor, next_norm) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (its output, next_norm of it): two launches."""
        h, _ = self.conv(res.block1.block[0], x, res.block1.block[2], add=self.est.time_bias[self.step][id(res)])
        return self.conv(
            res.block2.block[0], h, res.block2.block[2], res=(x, *self.est.res_convs[id(res)]), next_norm=next_norm
        )

    def attend(self, x: torch.Tensor, h: torch.Tensor, blocks) -> torch.Tensor:
        """The transformer blocks of one U-Net stage; h is norm1 of x."""
        inputs, attn = self.inputs, self.inputs.est_attn
        for i, block in enumerate(blocks):
            kv, scale = self.cache.est_view(self.step, block.slot)
            q = qkv_store(
                h, self.est.qkv[block.slot], kv, scale, inputs.est_store, block.attn1.heads, use_triton=self.use_triton
            )
            o, mid_lse = attention_partials(
                q,
                kv,
                scale,
                inputs.page_table,
                attn.rows,
                attn.work_row,
                attn.work_block,
                self.est.chunk,
                attn.block_m,
                self.use_triton,
            )
            out, proj, ff_out = block.attn1.to_out[0], block.ff.net[0].proj, block.ff.net[2]
            next_norm = blocks[i + 1].norm1 if i + 1 < len(blocks) else None
            x, h = block_tail(
                x,
                o,
                mid_lse,
                out.weight,
                out.bias,
                block.norm3,
                proj.weight,
                proj.bias,
                ff_out.weight,
                ff_out.bias,
                next_norm,
                use_triton=self.use_triton,
            )
        return x

    def flush(self) -> None:
        if self.pending is not None:
            save_rows(*self.pending, use_triton=self.use_triton)
            self.pending = None


class FusedEstimator:
    """Runs a PagedEstimator's modules and load-time tensors (conv matrices, stacked QKV, time biases) fused."""

    def __init__(self, paged: PagedEstimator, use_triton: bool | None):
        self.paged, self.use_triton = paged, use_triton  # None: Triton for CUDA tensors, the references else

    def __call__(self, step: int, est_in: torch.Tensor, inputs: FlowInputs, cache: FlowCache) -> torch.Tensor:
        """est_in [Mv, 320] (noisy mel, mu, speaker, condition) -> the final block's output [Mv, C] (the final
        projection is part of cfm_step)."""
        est, run = self.paged.est, _Call(self.paged, step, inputs, cache, self.use_triton)
        ((resnet, blocks, down),) = est.down_blocks
        skip = run.attend(*run.resnet(resnet, est_in, blocks[0].norm1), blocks)
        x, _ = run.conv(down, skip)
        for resnet, blocks in est.mid_blocks:
            x = run.attend(*run.resnet(resnet, x, blocks[0].norm1), blocks)
        ((resnet, blocks, up),) = est.up_blocks
        x = run.attend(*run.resnet(resnet, torch.cat([x, skip], dim=1), blocks[0].norm1), blocks)
        final = est.final_block
        x, _ = run.conv(final.block[0], run.conv(up, x)[0], final.block[2])
        run.flush()
        return x

    def solve(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        inputs: FlowInputs,
        cache: FlowCache,
        dts: list[float],
        rate: float,
    ) -> torch.Tensor:
        """The Euler steps from noise x [Mf, 80] float32 with classifier-free guidance -> mel [Mf, 80] float32."""
        mf, mel = x.shape
        est_in = mu.new_zeros(2 * mf, self.paged.est.cfg.in_channels)  # (Mv, [x | mu | speaker | condition])
        est_in[:mf, mel : 2 * mel] = mu
        est_in[:mf, 2 * mel : 3 * mel] = spks
        est_in[:mf, 3 * mel :] = cond
        est_in[:mf, :mel] = x
        est_in[mf:, :mel] = x
        x = x.contiguous()
        for step, dt in enumerate(dts):
            h = self(step, est_in, inputs, cache)
            cfm_step(h, self.paged.final_w, self.paged.final_b, x, est_in, dt, rate, self.use_triton)
        return x
