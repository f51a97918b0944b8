"""The engine's token LM: a Qwen2 or Llama body over packed tokens of many requests, reading and writing the paged
KV cache through light_tts.kernels.llm.ops (Triton on CUDA, torch reference on the CPU).

The network is what the family's LMArch says (spec.py). Weights are in the engine layout (the family's
engine_weights, e.g. weights.py): one embedding table over the engine's id space, fused qkv and gate_up
projections, one head. A forward takes ForwardInputs and returns logits [B, num_logits] in float32 for the last
input token of each request (only the ids of arch.logit_range, where the family narrows what can be sampled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.kernels.llm import ops
from light_tts.kernels.llm.quant import DTYPES as QUANT_DTYPES
from light_tts.llm.quantization import linear_weights, matmul
from light_tts.llm.spec import LMArch
from light_tts.model_config import QwenConfig


@dataclass
class ForwardInputs:
    """Per-step device inputs. Prefill packs every request's new tokens; decode has one token per request."""

    input_ids: torch.Tensor  # [T] int64, engine id space (request.py)
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64, KV slot of each token (-1: padding, not stored)
    b_req_idx: torch.Tensor  # [B] int32, req_to_token row
    b_seq_len: torch.Tensor  # [B] int32, tokens in the cache after this step
    is_prefill: bool
    b_start_loc: torch.Tensor | None = None  # [B] int32, prefill: first packed token of each request
    b_prefix_len: torch.Tensor | None = None  # [B] int32, prefill: tokens already cached
    last_token_idx: torch.Tensor | None = None  # [B] int64, prefill: packed index of each request's last token
    max_new_len: int | None = None  # prefill: host bound on new tokens of one request
    table_index: torch.Tensor | None = None  # [B] int64, decode: flat req_to_token index of the new token

    @classmethod
    def decode(cls, meta: torch.Tensor) -> ForwardInputs:
        """Decode inputs from one packed int64 tensor [6, B] (one host-to-device copy per step): input ids,
        positions, slots, rows, seq lens, row * row_width + position. Padding columns are PAD_COLUMN."""
        return cls(
            meta[0],
            meta[1],
            meta[2],
            meta[3].to(torch.int32),
            meta[4].to(torch.int32),
            is_prefill=False,
            table_index=meta[5],
        )


PAD_COLUMN = (0, 0, -1, 0, 0, 0)  # a decode padding row: slot -1 (not stored), sentinel row 0, seq_len 0


class LayerKV(NamedTuple):
    """One layer's view of the KV cache, as the kernels take it (scales None unless the cache is quantized)."""

    k: torch.Tensor  # [num_slots, num_kv_heads, head_dim]
    v: torch.Tensor
    k_scale: torch.Tensor | None  # [num_slots, num_kv_heads] float32
    v_scale: torch.Tensor | None
    req_to_token: torch.Tensor


class KVCache:
    """Keys and values of every layer: k[layer] is [num_slots, num_kv_heads, head_dim]; req_to_token maps a
    request row and position to a slot (row 0 is the padding sentinel). With kv_format "int8" or "fp8" the keys
    and values are stored in that format, each (slot, head) with its float32 scale in k_scale / v_scale."""

    def __init__(
        self,
        q: QwenConfig,
        num_slots: int,
        num_rows: int,
        max_total_len: int,
        dtype: torch.dtype,
        device: torch.device,
        kv_format: str | None = None,
    ):
        shape = (q.num_hidden_layers, num_slots, q.num_key_value_heads, q.head_dim)
        store_dtype = QUANT_DTYPES[kv_format] if kv_format else dtype
        self.k = torch.zeros(shape, dtype=store_dtype, device=device)
        self.v = torch.zeros(shape, dtype=store_dtype, device=device)
        self.k_scale = self.v_scale = None
        if kv_format:
            self.k_scale = torch.zeros(shape[:3], dtype=torch.float32, device=device)
            self.v_scale = torch.zeros(shape[:3], dtype=torch.float32, device=device)
        self.req_to_token = torch.zeros((num_rows, max_total_len), dtype=torch.int32, device=device)

    def layer(self, i: int) -> LayerKV:
        return LayerKV(
            self.k[i],
            self.v[i],
            None if self.k_scale is None else self.k_scale[i],
            None if self.v_scale is None else self.v_scale[i],
            self.req_to_token,
        )

    @staticmethod
    def bytes_per_slot(q: QwenConfig, dtype: torch.dtype, kv_format: str | None = None) -> int:
        """Device bytes one token takes in the cache: keys and values of every layer, and their scales."""
        per_head = q.head_dim * QUANT_DTYPES[kv_format].itemsize + 4 if kv_format else q.head_dim * dtype.itemsize
        return 2 * q.num_hidden_layers * q.num_key_value_heads * per_head


class DecoderLayer(nn.Module):
    def __init__(self, q: QwenConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = q.num_attention_heads, q.num_key_value_heads, q.head_dim
        self.eps = q.rms_norm_eps
        self.sm_scale = q.head_dim**-0.5
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.input_layernorm = nn.Parameter(torch.empty(q.hidden_size))
        self.qkv_proj = nn.Linear(q.hidden_size, self.q_size + 2 * self.kv_size, bias=q.attention_bias)
        self.o_proj = nn.Linear(self.q_size, q.hidden_size, bias=False)
        self.post_attention_layernorm = nn.Parameter(torch.empty(q.hidden_size))
        self.gate_up_proj = nn.Linear(q.hidden_size, 2 * q.intermediate_size, bias=False)
        self.down_proj = nn.Linear(q.intermediate_size, q.hidden_size, bias=False)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, inp: ForwardInputs, cache: LayerKV, cos_sin: torch.Tensor
    ):
        """h [T, H] is the previous layer's output, residual the running sum before it (None at layer 0)."""
        if residual is None:
            x, _ = ops.rms_norm(h, self.input_layernorm, self.eps)
            residual = h
        else:
            x, residual = ops.rms_norm(h, self.input_layernorm, self.eps, residual)
        qkv = matmul(self.qkv_proj, x)  # the rotary kernel adds the bias: one launch fewer at batch 1
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # [T, heads * D] -> [T, heads, D]: strided views into qkv, rotated in place
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        ops.apply_rotary(
            q,
            k,
            inp.positions,
            cos_sin,
            v,
            cache.k,
            cache.v,
            inp.slot_mapping,
            self.qkv_proj.bias,
            cache.k_scale,
            cache.v_scale,
        )
        if inp.is_prefill:
            attn = ops.prefill_attention(
                q,
                cache.k,
                cache.v,
                cache.req_to_token,
                inp.b_req_idx,
                inp.b_start_loc,
                inp.b_seq_len,
                inp.b_prefix_len,
                self.sm_scale,
                inp.max_new_len,
                cache.k_scale,
                cache.v_scale,
            )
        else:
            attn = self._decode_attention(q, inp, cache)
        h = self.o_proj(attn.reshape(-1, self.q_size))
        x, residual = ops.rms_norm(h, self.post_attention_layernorm, self.eps, residual)
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x))), residual

    def _decode_attention(self, q: torch.Tensor, inp: ForwardInputs, cache: LayerKV) -> torch.Tensor:
        return ops.decode_attention(
            q,
            cache.k,
            cache.v,
            cache.req_to_token,
            inp.b_req_idx,
            inp.b_seq_len,
            self.sm_scale,
            k_scale=cache.k_scale,
            v_scale=cache.v_scale,
        )

    def forward_small(
        self, h: torch.Tensor, residual: torch.Tensor | None, inp: ForwardInputs, cache: LayerKV, cos_sin: torch.Tensor
    ):
        """forward for a decode batch of a few rows in 6 launches (kernels/llm/small_batch.py): norm + qkv + rotary
        + K/V store, attention (2), o_proj, norm + gate_up + silu, down_proj. The next layer's norm adds the
        residual."""
        weight, scale, bias = linear_weights(self.qkv_proj)
        q, residual = ops.qkv_rope(
            h, weight, scale, bias, self.input_layernorm, self.eps, residual, inp.positions, cos_sin,
            inp.slot_mapping, cache.k, cache.v, cache.k_scale, cache.v_scale,
        )  # fmt: skip
        attn = self._decode_attention(q, inp, cache)
        h, _ = ops.norm_linear(attn.reshape(-1, self.q_size), *linear_weights(self.o_proj))
        weight, scale, _ = linear_weights(self.gate_up_proj)
        x, residual = ops.gate_up_silu(h, weight, scale, self.post_attention_layernorm, self.eps, residual)
        h, _ = ops.norm_linear(x, *linear_weights(self.down_proj))
        return h, residual


class EngineSpeechLM(nn.Module):
    """small_batch_rows: decode batches of at most this many rows run the small-batch kernels (forward_small;
    0: never; at most small_batch.MAX_ROWS). The model runner sets it from EngineConfig.small_batch_rows."""

    def __init__(self, arch: LMArch):
        super().__init__()
        self.small_batch_rows = 0
        q = arch.body
        self.arch = arch
        self.embed = nn.Embedding(arch.num_embeddings, q.hidden_size)  # the engine's id space (the family's layout)
        self.layers = nn.ModuleList(DecoderLayer(q) for _ in range(q.num_hidden_layers))
        self.norm = nn.Parameter(torch.empty(q.hidden_size))
        self.llm_decoder = nn.Linear(q.hidden_size, arch.num_logits, bias=arch.head_bias)  # the head

    def tie_head(self) -> None:
        """With a tied head, make the head's weight the embedding table itself (after the model has its device and
        dtype: one copy in memory; moving the model keeps them one)."""
        if self.arch.tie_head:
            self.llm_decoder.weight = self.embed.weight

    def head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's weight and bias over arch.logit_range (row views: the ids the sampler can draw)."""
        weight, bias = self.llm_decoder.weight, self.llm_decoder.bias
        if self.arch.logit_range is None:
            return weight, bias
        lo, hi = self.arch.logit_range
        return weight[lo:hi], None if bias is None else bias[lo:hi]

    def forward(self, inp: ForwardInputs, kv: KVCache, cos_sin: torch.Tensor) -> torch.Tensor:
        if not inp.is_prefill:
            # record each request's new slot at its position; padding writes -1 into the sentinel row, never read
            kv.req_to_token.view(-1).index_copy_(0, inp.table_index, inp.slot_mapping.to(torch.int32))
        h = self.embed(inp.input_ids)
        residual = None
        if not inp.is_prefill and len(inp.input_ids) <= self.small_batch_rows:
            for i, layer in enumerate(self.layers):
                h, residual = layer.forward_small(h, residual, inp, kv.layer(i), cos_sin)
            weight, bias = self.head()
            eps = self.arch.body.rms_norm_eps
            return ops.norm_linear(h, weight, None, bias, self.norm, eps, residual, torch.float32)[0]
        for i, layer in enumerate(self.layers):
            h, residual = layer(h, residual, inp, kv.layer(i), cos_sin)
        h, _ = ops.rms_norm(h, self.norm, self.arch.body.rms_norm_eps, residual)
        if inp.is_prefill:
            h = h.index_select(0, inp.last_token_idx)
        return F.linear(h, *self.head()).float()
