"""The flow encoder (UpsampleConformerEncoder) over packed chunks of many streams, with paged keys/values.

The same arithmetic as models/flow/encoder.py, reorganised for packing: tensors are (positions, channels) with
the rows' positions concatenated; causal convs are matmuls over their taps (flow_inputs.py); attention reads
every stream's cached keys/values through its page table, and the new ones are first stored in place. Fused (with
the fused estimator, `--decode_hot_path fused`), a conformer block is 3 launches as the estimator's transformer blocks
are (fused_estimator.py): the
biased QKV projection storing its keys/values, the rel-pos attention, and the rest of the block for whole rows
(out-projection, residual, norm, SiLU feed-forward, residual, and the next block's norm or the final one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from light_tts.decode.flow.flow_cache import FlowCache
from light_tts.decode.flow.flow_inputs import FlowInputs
from light_tts.kernels.flow.flow_ops import block_tail, qkv_store, relpos_attention, store_pages
from light_tts.models.cosyvoice2.flow.encoder import ConformerBlock, UpsampleConformerEncoder


def conv_matrix(conv: torch.nn.Conv1d) -> torch.Tensor:
    """Conv1d weight [out, in, k] -> [out, k * in], the matmul over taps ordered oldest first."""
    w = conv.weight.detach()
    return w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()


def tap_conv(x_ext: torch.Tensor, taps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A convolution as a matmul: x_ext [N, C] rows gathered by taps [M, k] -> [M, out]."""
    return F.linear(x_ext[taps].reshape(taps.shape[0], -1), weight, bias)


def extend(x: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    """[x; tails; zero row]: the extended input that taps index (see flow_inputs.py)."""
    return torch.cat([x, tails, x.new_zeros(1, x.shape[1])])


class PagedConformer:
    def __init__(self, block: ConformerBlock, max_positions: int):
        att = block.self_attn
        self.block, self.heads, self.head_dim = block, att.h, att.d_k
        self.qkv_weight = torch.cat([att.linear_q.weight, att.linear_k.weight, att.linear_v.weight]).detach()
        self.qkv_bias = torch.cat([att.linear_q.bias, att.linear_k.bias, att.linear_v.bias]).detach()
        # linear_pos of every relative position a stream can reach: rows for max_positions-1 down to its negative
        self.pos_table = att._projected_positions(max_positions - 1, 1 - max_positions).detach().contiguous()
        self.bias_u = att.pos_bias_u.detach().contiguous()
        self.bias_v = att.pos_bias_v.detach().contiguous()

    def __call__(
        self,
        x: torch.Tensor,
        kv: torch.Tensor,
        page_table: torch.Tensor,
        attn,
        store,
        chunk: int,
        use_triton: bool | None,
    ) -> torch.Tensor:
        b = self.block
        m = x.shape[0]
        qkv = F.linear(b.norm_mha(x), self.qkv_weight, self.qkv_bias).view(m, 3, self.heads, self.head_dim)
        store_pages(qkv[:, 1:], kv, None, store, use_triton)
        o = relpos_attention(
            qkv[:, 0],
            kv,
            self.pos_table,
            self.bias_u,
            self.bias_v,
            page_table,
            attn.rows,
            attn.work_row,
            attn.work_block,
            chunk,
            attn.block_m,
            use_triton,
        )
        x = x + b.self_attn.linear_out(o.reshape(m, -1))
        return x + b.feed_forward(b.norm_ff(x))

    def fused(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        kv: torch.Tensor,
        page_table: torch.Tensor,
        attn,
        store,
        chunk: int,
        next_norm,
        use_triton: bool | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block in 3 launches; h is norm_mha(x) -> (x, next_norm(x) or None)."""
        b = self.block
        q = qkv_store(h, self.qkv_weight, kv, None, store, self.heads, self.qkv_bias, use_triton=use_triton)
        o = relpos_attention(
            q,
            kv,
            self.pos_table,
            self.bias_u,
            self.bias_v,
            page_table,
            attn.rows,
            attn.work_row,
            attn.work_block,
            chunk,
            attn.block_m,
            use_triton,
        )
        out, ff = b.self_attn.linear_out, b.feed_forward
        return block_tail(
            x,
            o,
            None,
            out.weight,
            out.bias,
            b.norm_ff,
            ff.w_1.weight,
            ff.w_1.bias,
            ff.w_2.weight,
            ff.w_2.bias,
            next_norm,
            act="silu",
            use_triton=use_triton,
        )


class PagedEncoder:
    def __init__(self, encoder: UpsampleConformerEncoder, max_tokens: int, fused: bool = False):
        self.encoder, self.fused = encoder, fused
        la = encoder.pre_lookahead_layer
        self.la_w1, self.la_b1 = conv_matrix(la.conv1), la.conv1.bias.detach()
        self.la_w2, self.la_b2 = conv_matrix(la.conv2), la.conv2.bias.detach()
        self.up_w, self.up_b = conv_matrix(encoder.up_layer.conv), encoder.up_layer.conv.bias.detach()
        stride = encoder.cfg.upsample_stride
        self.blocks = [PagedConformer(b, max_tokens) for b in encoder.encoders]
        self.up_blocks = [PagedConformer(b, stride * max_tokens) for b in encoder.up_encoders]
        self.chunk = encoder.cfg.static_chunk_size

    def __call__(
        self, emb: torch.Tensor, inputs: FlowInputs, cache: FlowCache, use_triton: bool | None
    ) -> torch.Tensor:
        """emb [Mt_in, D] token embeddings (new and lookahead tokens) -> [Mf, D] hidden frames of the new tokens."""
        enc = self.encoder
        e = extend(enc.embed(emb), emb.new_zeros(0, emb.shape[1]))  # [Mt_in + 1, D], last row zero
        x = e[inputs.x_rows]
        h = F.leaky_relu(tap_conv(e, inputs.la_in_taps, self.la_w1, self.la_b1))
        h_ext = extend(h, cache.la_tails.view(-1, h.shape[1])[inputs.la["tail_read"]])
        cache.la_tails.view(-1, h.shape[1])[inputs.la["save_dst"]] = h_ext[inputs.la["save_src"]]
        x = tap_conv(h_ext, inputs.la["taps"], self.la_w2, self.la_b2) + x
        x = self._blocks(
            self.blocks, x, cache.enc_kv, inputs, inputs.enc_attn, inputs.enc_store, self.chunk, None, use_triton
        )
        x_ext = extend(x, cache.up_tails.view(-1, x.shape[1])[inputs.up["tail_read"]])
        cache.up_tails.view(-1, x.shape[1])[inputs.up["save_dst"]] = x_ext[inputs.up["save_src"]]
        x = enc.up_embed(tap_conv(x_ext, inputs.up["taps"], self.up_w, self.up_b))
        return self._blocks(
            self.up_blocks,
            x,
            cache.up_kv,
            inputs,
            inputs.up_attn,
            inputs.up_store,
            enc.cfg.upsample_stride * self.chunk,
            enc.after_norm,
            use_triton,
        )

    def _blocks(
        self,
        blocks: list[PagedConformer],
        x: torch.Tensor,
        kv: torch.Tensor,
        inputs: FlowInputs,
        attn,
        store,
        chunk: int,
        final_norm,
        use_triton: bool | None,
    ) -> torch.Tensor:
        """A stack of conformer blocks (block i's pages are kv[:, i]), then final_norm if given."""
        if not self.fused:
            for i, block in enumerate(blocks):
                x = block(x, kv[:, i], inputs.page_table, attn, store, chunk, use_triton)
            return final_norm(x) if final_norm is not None else x
        h = blocks[0].block.norm_mha(x)
        for i, block in enumerate(blocks):
            next_norm = blocks[i + 1].block.norm_mha if i + 1 < len(blocks) else final_norm
            x, h = block.fused(x, h, kv[:, i], inputs.page_table, attn, store, chunk, next_norm, use_triton)
        return h if final_norm is not None else x
