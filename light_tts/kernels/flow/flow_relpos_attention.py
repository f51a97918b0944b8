"""Paged relative-position attention of the flow encoder (espnet rel-pos self-attention), packed over streams.

scores(i, j) = ((q_i + u) . k_j + (q_i + v) . P[p_i - p_j]) / sqrt(D), with P the layer's projected relative
position encodings (a table [2R - 1, H, D] for relative positions R-1 down to -(R-1), row R-1-r for position r),
then the static chunk mask (mode 0; chunks of CHUNK positions) or full attention over ctx keys (mode 1).

Queries are packed as in flow_attention.py (per-row q_start, num_q, absolute position pos0 of the first); keys and
values are the stream's pages kv [pages, 2, 1, H, PAGE, D] in page-table order. Keys are visited in blocks of
BLOCK_N positions that may straddle pages (PAGE is 25 tokens or 50 frames), each key row found through the page
table. The positional term is a [BLOCK_M, BLOCK_N, D] gather from the table: the encoder is small next to the
estimator, so plain FMAs suffice there.
"""

import torch
import triton
import triton.language as tl

from light_tts.kernels.flow.flow_attention import query_block

LOG2_E = 1.4426950408889634


@triton.jit
def _relpos_attention_kernel(
    q_ptr,
    o_ptr,
    kv_ptr,
    table_ptr,
    bias_u_ptr,
    bias_v_ptr,
    page_table_ptr,
    work_row_ptr,
    work_block_ptr,
    row_q_start_ptr,
    row_num_q_ptr,
    row_pos0_ptr,
    row_ctx_ptr,
    row_stream_ptr,
    row_mode_ptr,
    row_skip_lo_ptr,
    row_skip_hi_ptr,
    stride_qm,
    stride_qh,
    stride_om,
    stride_oh,
    stride_page,
    stride_kv,
    stride_head,
    stride_frame,
    stride_tr,
    stride_th,
    stride_table,
    table_top,
    scale_log2,
    CHUNK: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    item = tl.program_id(0)
    head = tl.program_id(1)
    row = tl.load(work_row_ptr + item)
    if row < 0:
        return
    qb = tl.load(work_block_ptr + item)
    q_start = tl.load(row_q_start_ptr + row)
    num_q = tl.load(row_num_q_ptr + row)
    pos0 = tl.load(row_pos0_ptr + row)
    ctx = tl.load(row_ctx_ptr + row)
    stream = tl.load(row_stream_ptr + row).to(tl.int64)
    mode = tl.load(row_mode_ptr + row)
    hide_lo = tl.load(row_skip_lo_ptr + row) * PAGE  # positions [hide_lo, hide_hi) are hidden (context window)
    hide_hi = tl.load(row_skip_hi_ptr + row) * PAGE

    rows, is_q, q_pos, q_limit, k_end = query_block(qb, num_q, q_start, pos0, ctx, mode, CHUNK, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + rows[:, None] * stride_qm + head * stride_qh + dims[None, :], mask=is_q[:, None], other=0.0).to(
        tl.float32
    )
    q_u = (q + tl.load(bias_u_ptr + head * HEAD_DIM + dims)[None, :].to(tl.float32)).to(kv_ptr.dtype.element_ty)
    q_v = q + tl.load(bias_v_ptr + head * HEAD_DIM + dims)[None, :].to(tl.float32)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for k_start in range(0, k_end, BLOCK_N):
        k_pos = k_start + offs_n
        is_k = (k_pos < k_end) & ((k_pos < hide_lo) | (k_pos >= hide_hi))
        page = tl.load(page_table_ptr + stream * stride_table + k_pos // PAGE, mask=is_k, other=0).to(tl.int64)
        addr = page * stride_page + head * stride_head + (k_pos % PAGE) * stride_frame
        k = tl.load(kv_ptr + addr[:, None] + dims[None, :], mask=is_k[:, None], other=0.0)
        v = tl.load(kv_ptr + stride_kv + addr[:, None] + dims[None, :], mask=is_k[:, None], other=0.0)
        ac = tl.dot(q_u, tl.trans(k), input_precision=DOT_PRECISION)
        rel_row = table_top - (q_pos[:, None] - k_pos[None, :])  # (BLOCK_M, BLOCK_N)
        rel_row = tl.where(is_q[:, None] & is_k[None, :], rel_row, table_top)
        pos = tl.load(
            table_ptr + rel_row[:, :, None].to(tl.int64) * stride_tr + head * stride_th + dims[None, None, :]
        ).to(tl.float32)  # (BLOCK_M, BLOCK_N, D)
        bd = tl.sum(q_v[:, None, :] * pos, axis=2)
        scores = (ac + bd) * scale_log2
        visible = (k_pos[None, :] < q_limit[:, None]) & is_k[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        o_ptr + rows[:, None] * stride_om + head * stride_oh + dims[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=is_q[:, None],
    )


def relpos_attention_triton(
    q: torch.Tensor,
    kv: torch.Tensor,
    table: torch.Tensor,
    bias_u: torch.Tensor,
    bias_v: torch.Tensor,
    page_table: torch.Tensor,
    rows: dict[str, torch.Tensor],
    work_row: torch.Tensor,
    work_block: torch.Tensor,
    chunk: int,
    block_m: int = 16,
) -> torch.Tensor:
    """q [M, H, D]; kv [pages, 2, 1, H, PAGE, D]; table [2R-1, H, D]; bias_u, bias_v [H, D]; rows: int32 arrays
    q_start, num_q, pos0, ctx, stream, mode, skip_lo, skip_hi (pages hidden); work items as in flow_attention
    -> o [M, H, D]."""
    m, num_heads, head_dim = q.shape
    assert kv.dim() == 6 and kv.shape[2] == 1 and kv.shape[3] == num_heads and kv.stride(5) == 1
    assert table.shape[1:] == (num_heads, head_dim) and table.stride(2) == 1 and q.stride(2) == 1
    assert bias_u.is_contiguous() and bias_v.is_contiguous() and page_table.stride(1) == 1
    o = torch.empty_like(q)
    if work_row.numel() == 0:
        return o
    _relpos_attention_kernel[(work_row.numel(), num_heads)](
        q,
        o,
        kv,
        table,
        bias_u,
        bias_v,
        page_table,
        work_row,
        work_block,
        rows["q_start"],
        rows["num_q"],
        rows["pos0"],
        rows["ctx"],
        rows["stream"],
        rows["mode"],
        rows["skip_lo"],
        rows["skip_hi"],
        q.stride(0),
        q.stride(1),
        o.stride(0),
        o.stride(1),
        kv.stride(0),
        kv.stride(1),
        kv.stride(3),
        kv.stride(4),
        table.stride(0),
        table.stride(1),
        page_table.stride(0),
        (table.shape[0] - 1) // 2,
        head_dim**-0.5 * LOG2_E,
        CHUNK=chunk,
        PAGE=kv.shape[4],
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=16,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return o


def relpos_attention_ref(
    q: torch.Tensor,
    kv: torch.Tensor,
    table: torch.Tensor,
    bias_u: torch.Tensor,
    bias_v: torch.Tensor,
    page_table: torch.Tensor,
    rows: dict[str, torch.Tensor],
    work_row: torch.Tensor,
    work_block: torch.Tensor,
    chunk: int,
    block_m: int = 16,
) -> torch.Tensor:
    """Row by row in float32, the arithmetic of RelPositionAttention (syncs with the host)."""
    o = torch.zeros_like(q)
    page = kv.shape[4]
    top = (table.shape[0] - 1) // 2
    host = {k: v.tolist() for k, v in rows.items()}
    for r in range(len(host["q_start"])):
        num_q, ctx = host["num_q"][r], host["ctx"][r]
        if num_q <= 0 or host["stream"][r] < 0:
            continue
        pages = page_table[host["stream"][r], : -(-ctx // page)].tolist()
        k, v = (
            kv[pages, which, 0].float().permute(1, 0, 2, 3).reshape(q.shape[1], -1, q.shape[2])[:, :ctx]
            for which in (0, 1)
        )
        for q0 in range(0, num_q, 256):  # query blocks: bounded memory for whole utterances
            n = min(256, num_q - q0)
            start, pos0 = host["q_start"][r] + q0, host["pos0"][r] + q0
            qr = q[start : start + n].float()  # (n, H, D)
            q_pos = pos0 + torch.arange(n)
            ac = torch.einsum("nhd,hkd->hnk", qr + bias_u.float(), k)
            # the positional term over the window of relative positions pos0+n-1 down to pos0-ctx+1, then
            # shifted: query i, key j (relative position pos0+i-j) is column n-1-i+j (espnet's rel_shift)
            window = table[top - (pos0 + n - 1) : top - (pos0 - ctx + 1) + 1].float()  # (n + ctx - 1, H, D)
            bd_full = torch.einsum("nhd,rhd->hnr", qr + bias_v.float(), window).contiguous()
            width = bd_full.shape[2]
            bd = bd_full.as_strided((q.shape[1], n, ctx), (n * width, width - 1, 1), n - 1)
            scores = (ac + bd) * q.shape[2] ** -0.5
            k_pos = torch.arange(ctx)[None, :]
            visible = k_pos < ((q_pos // chunk + 1) * chunk)[:, None] if host["mode"][r] == 0 else k_pos >= 0
            visible = visible & ~((k_pos >= host["skip_lo"][r] * page) & (k_pos < host["skip_hi"][r] * page))
            scores = scores.masked_fill(~visible, float("-inf"))
            o[start : start + n] = (scores.softmax(dim=-1) @ v).transpose(0, 1).to(q.dtype)
    return o
