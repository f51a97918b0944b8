"""CosyVoice3's DiT flow over packed chunks of many streams, with every cache in the paged pool (DiTCache): the
decode engine's hot path for this family, one call per engine step (a CUDA graph replay at the bucket's shapes).

Equal to models/cosyvoice3/flow (DiTFlow.chunk_mel over each stream's dense cache) to float rounding; only the
layout differs (dit_inputs.py): the rows' positions packed along one axis, both CFG branches as virtual rows, the
lookahead convs as matmuls over taps, the positional convs as one kernel each over an extended sequence
(flow_pos_conv.py), attention through page tables with the shared flow_attention kernel. The time embedding
depends on the CFM step only (every row shares the step's t), so every block's AdaLayerNorm modulations (shift,
scale, gate) are computed once at load for all ten steps (with 1 + scale, as the kernel takes it); rotary angles
are a table by absolute frame.

The elementwise ops between the GEMMs run fused (kernels/flow/flow_dit.py): a block's gated residual add and the
next modulation are one ada_modulate (the previous block's MLP residual folds into the next block's first
modulation, the last one's into norm_out), the rotary of head 0 is one rotary_head0, and the guided Euler update
that writes x into the next step's input is one cfg_update. With use_triton off (CPU) each runs its torch
reference: the unfused ops, in today's order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from light_tts.decode.dit.dit_cache import DiTCache
from light_tts.decode.dit.dit_inputs import DiTInputs, build_dit_inputs
from light_tts.decode.flow.paged_encoder import conv_matrix, extend, tap_conv
from light_tts.kernels.flow.flow_ops import (
    ada_modulate,
    cfg_update,
    flow_attention,
    pos_conv,
    rotary_head0,
    store_pages,
)
from light_tts.kernels.flow.flow_pos_conv import pos_conv_taps
from light_tts.models.cfm import timestep_embedding
from light_tts.models.cosyvoice3.flow import DiTFlow
from light_tts.models.cosyvoice3.flow.dit import CONV_POS_GROUPS, FREQ_EMBED_DIM, LN_EPS


class PagedDiT:
    def __init__(
        self, flow: DiTFlow, cache: DiTCache, max_tokens: int, use_triton: bool | None = None, fused: bool = False
    ):
        """max_tokens: the most tokens (prompt included) one stream's cache can hold (sizes the rotary table);
        fused: CosyVoice2's fused estimator (GEMMs with their epilogues) has no DiT counterpart yet; the DiT's
        elementwise ops run fused either way (see the module docstring), its GEMMs through torch (the engine says
        so at startup)."""
        self.flow, self.cache, self.use_triton = flow, cache, use_triton
        la = flow.pre_lookahead_layer
        self.la_w1, self.la_b1 = conv_matrix(la.conv1), la.conv1.bias.detach()
        self.la_w2, self.la_b2 = conv_matrix(la.conv2), la.conv2.bias.detach()
        est = flow.decoder.estimator
        self.est, self.chunk = est, est.cfg.static_chunk_size
        self.qkv = [
            (
                torch.cat([b.attn.to_q.weight, b.attn.to_k.weight, b.attn.to_v.weight]).detach(),
                torch.cat([b.attn.to_q.bias, b.attn.to_k.bias, b.attn.to_v.bias]).detach(),
            )
            for b in est.transformer_blocks
        ]
        pos = est.input_embed.conv_pos_embed
        self.pos_convs = [
            (pos_conv_taps(c[0].weight.detach(), CONV_POS_GROUPS), c[0].bias.detach()) for c in (pos.conv1, pos.conv2)
        ]
        cfm = flow.decoder
        self.times, self.dts = cfm.euler_times(cache.device)  # as CausalConditionalCFM.solve accumulates them
        self.rate = cfm.cfg.inference_cfg_rate
        self.dt_values = [float(dt) for dt in self.dts]  # Python floats: kernel arguments, no sync in a graph
        dtype = est.proj_out.weight.dtype
        self.mods, self.final = [], []  # per step: [blocks] of 6 (dim,) modulations, scales as 1 + scale
        with torch.inference_mode():
            for t in self.times:
                t_emb = est.time_embed.time_mlp(timestep_embedding(t, FREQ_EMBED_DIM).to(dtype))
                mods = [[m[0] for m in block.attn_norm(t_emb)] for block in est.transformer_blocks]
                # (shift_msa, 1 + scale_msa, gate_msa, shift_mlp, 1 + scale_mlp, gate_mlp)
                self.mods.append([[m[0], 1 + m[1], m[2], m[3], 1 + m[4], m[5]] for m in mods])
                scale, shift = (m[0] for m in est.norm_out(t_emb))
                self.final.append((1 + scale, shift))
            frames = est.rotary_embed.freqs(0, max_tokens * flow.cfg.token_mel_ratio)  # [frames, dim_head] float32
        self.cos, self.sin = frames.cos(), frames.sin()

    def build_inputs(self, specs, device=None, bucket=None, table_width: int = 0) -> DiTInputs:
        c = self.cache
        return build_dit_inputs(specs, c.shape, c.num_slots, c.scratch_page, device or c.device, bucket, table_width)

    @torch.inference_mode()
    def __call__(self, inputs: DiTInputs) -> torch.Tensor:
        """-> float32 mel [Mf, 80] of every row's new frames (packed as inputs.frame_starts / num_frames say)."""
        flow, cache, dtype = self.flow, self.cache, self.cache.act_dtype
        e = extend(flow.input_embedding(inputs.tokens), cache.la_tails.new_zeros(0, flow.cfg.input_size))
        h = F.leaky_relu(tap_conv(e, inputs.la_in_taps, self.la_w1, self.la_b1))
        tails = cache.la_tails.view(-1, h.shape[1])
        h_ext = extend(h, tails[inputs.la["tail_read"]])
        tails[inputs.la["save_dst"]] = h_ext[inputs.la["save_src"]]
        mu = tap_conv(h_ext, inputs.la["taps"], self.la_w2, self.la_b2) + e[inputs.x_rows]
        mu = mu.repeat_interleave(flow.cfg.token_mel_ratio, dim=0)  # [Mf, 80]: every token's two frames
        zeros = torch.zeros_like(mu)
        mu_in = torch.cat([mu, zeros])
        spks_in = torch.cat([cache.spks[inputs.spk_slots], zeros])
        cond_in = torch.cat([inputs.cond.to(dtype), zeros])
        cos, sin = self.cos[inputs.positions], self.sin[inputs.positions]  # [Mv, dim_head]
        x = flow.decoder.rand_noise[0][:, inputs.noise_frames].t().float().contiguous()  # [Mf, 80], fixed noise
        est_in = torch.cat([torch.cat([x, x]).to(dtype), cond_in, mu_in, spks_in], dim=1)  # x's columns per step
        for step in range(len(self.times)):
            v = self._estimate(step, est_in, inputs, cos, sin)
            cfg_update(v, x, est_in, self.dt_values[step], self.rate, self.use_triton)
        return x

    def _estimate(
        self, step: int, x: torch.Tensor, inputs: DiTInputs, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """x [Mv, 320] (noisy mel, condition, mu, speaker) -> velocity [Mv, 80] of CFM step `step`."""
        est, cache, use_triton = self.est, self.cache, self.use_triton
        h = F.linear(x, est.input_embed.proj.weight, est.input_embed.proj.bias)
        h = self._pos_convs(step, h, inputs) + h
        m, heads, head_dim = h.shape[0], est.cfg.heads, est.cfg.dim_head
        attn = inputs.est_attn
        gate, y = None, None  # the previous block's MLP residual, added by the next modulation
        for b, (block, (w_qkv, b_qkv), mods) in enumerate(zip(est.transformer_blocks, self.qkv, self.mods[step])):
            shift_msa, scale1p_msa, gate_msa, shift_mlp, scale1p_mlp, gate_mlp = mods
            h, normed = ada_modulate(h, gate, y, scale1p_msa, shift_msa, LN_EPS, use_triton)
            qkv = F.linear(normed, w_qkv, b_qkv).view(m, 3, heads, head_dim)
            rotary_head0(qkv, cos, sin, use_triton)  # x-transformers rotates the first dim_head channels of q, k
            kv, kv_scale = cache.est_view(step, b)
            store_pages(qkv[:, 1:], kv, kv_scale, inputs.est_store, use_triton)
            o = flow_attention(
                qkv[:, 0],
                kv,
                kv_scale,
                inputs.page_table,
                attn.rows,
                attn.work_row,
                attn.work_block,
                self.chunk,
                attn.block_m,
                use_triton,
            )
            out = block.attn.to_out[0]
            y = F.linear(o.reshape(m, -1), out.weight, out.bias)
            h, normed = ada_modulate(h, gate_msa, y, scale1p_mlp, shift_mlp, LN_EPS, use_triton)
            ff_in, ff_out = block.ff.ff[0][0], block.ff.ff[2]
            ff = F.gelu(F.linear(normed, ff_in.weight, ff_in.bias), approximate="tanh")
            gate, y = gate_mlp, F.linear(ff, ff_out.weight, ff_out.bias)
        scale1p, shift = self.final[step]
        _, normed = ada_modulate(h, gate, y, scale1p, shift, LN_EPS, use_triton)
        return F.linear(normed, est.proj_out.weight, est.proj_out.bias)

    def _pos_convs(self, step: int, h: torch.Tensor, inputs: DiTInputs) -> torch.Tensor:
        """The causal positional branch: two grouped k=31 convs (each after its 30 cached inputs) and Mish, over the
        extended sequence of dit_inputs.py; each conv's inputs before the rows' ends are saved as their tails."""
        pos, x = inputs.pos, h
        for conv, (taps, bias) in enumerate(self.pos_convs):
            tails = self.cache.pos_table(step, conv)
            ext = torch.cat([x, tails[pos["tail_read"]], x.new_zeros(1, x.shape[1])])[pos["ext"]]  # [Lx, dim]
            tails[pos["save_dst"]] = ext[pos["save_src"]]
            x = pos_conv(ext, pos["out"], taps, bias, self.use_triton)  # the outputs kept only, Mish applied
        return x
