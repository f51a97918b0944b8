"""Paged attention of the flow's CFM estimator: packed query frames of many streams over their cached keys/values.

The estimator's queries are packed: every virtual row (one CFG branch of one stream) contributes its new frames as
a contiguous run of rows of q [M, H, D]. Keys and values live in the flow-cache pool, one page per chunk of
PAGE frames: kv [num_pages, 2 (keys, values), 2 (CFG branch), H, PAGE, D], the view of one (CFM step, block) of
the pool. A virtual row's keys are its stream's pages in page-table order, its new frames already stored in them.

Masks (per virtual row): mode 0 is the static chunk mask of streamed chunks (a query at absolute frame p sees the
keys before the end of its own chunk of CHUNK frames, within the row's ctx_len valid keys); mode 1 is full
attention over ctx_len keys (whole utterances). Pages [skip_lo, skip_hi) are hidden (the optional context window).

Work items (program_id 0) are (virtual row, query block) pairs made on the host; an item whose row is -1 is graph
padding and exits at once, so the grid depends only on the bucket, never on tensor values. fp8 pools carry one
scale per (page, key/value, branch, head): scores and outputs are multiplied by it (a scalar per page tile).

Small passes split each item's pages over NUM_SPLITS programs (program_id 2, flash-decoding): each writes its
normalised partial output and log-sum-exp, and a merge kernel combines them, so one stream's long context is read
by many SMs at once. The split count depends on the grid size only (graph-safe); large passes use one split.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634
MAX_SPLITS = 16
REF_QUERY_BLOCK = 256  # queries per pass of the torch reference


@triton.jit
def query_block(qb, num_q, q_start, pos0, ctx, mode, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    """A work item's query rows: packed row indices, validity, absolute positions, the keys each query may see
    (chunk mask or full), and the block's key end. The last query sees the most keys (limits grow with the
    position): scalar arithmetic, not a reduction, bounds the key loop (Triton's interpreter cannot loop to a
    reduced value)."""
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    is_q = offs_m < num_q
    rows = (q_start + offs_m).to(tl.int64)
    q_pos = pos0 + offs_m
    q_limit = tl.where(mode == 0, tl.minimum((q_pos // CHUNK + 1) * CHUNK, ctx), ctx)
    q_limit = tl.where(is_q, q_limit, 0)  # padding queries see nothing (their output is zero)
    last_pos = pos0 + tl.minimum(num_q, (qb + 1) * BLOCK_M) - 1
    k_end = tl.where(mode == 0, tl.minimum((last_pos // CHUNK + 1) * CHUNK, ctx), ctx)
    return rows, is_q, q_pos, q_limit, k_end


@triton.jit
def _attend_page(
    q,
    m_i,
    l_i,
    acc,
    kv_ptr,
    scale_ptr,
    page,
    branch,
    head,
    q_limit,
    key_base,
    stride_page,
    stride_kv,
    stride_branch,
    stride_head,
    stride_frame,
    sstride_page,
    sstride_kv,
    sstride_branch,
    scale_log2,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    IS_FP8: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    in_page = offs_n < PAGE
    base = kv_ptr + page.to(tl.int64) * stride_page + branch * stride_branch + head * stride_head
    tile = offs_n[:, None] * stride_frame + dims[None, :]
    k = tl.load(base + tile, mask=in_page[:, None], other=0.0)
    v = tl.load(base + stride_kv + tile, mask=in_page[:, None], other=0.0)
    k_scale = 1.0
    v_scale = 1.0
    if IS_FP8:
        sbase = scale_ptr + page.to(tl.int64) * sstride_page + branch * sstride_branch + head
        k_scale = tl.load(sbase)
        v_scale = tl.load(sbase + sstride_kv)
        k = k.to(q.dtype)
        v = v.to(q.dtype)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * (scale_log2 * k_scale)
    visible = (key_base + offs_n)[None, :] < q_limit[:, None]
    scores = tl.where(visible & in_page[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet (padding queries)
    p = tl.exp2(scores - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot((p * v_scale).to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _flow_attention_kernel(
    q_ptr,
    o_ptr,
    kv_ptr,
    scale_ptr,
    page_table_ptr,
    work_row_ptr,
    work_block_ptr,
    row_q_start_ptr,
    row_num_q_ptr,
    row_pos0_ptr,
    row_ctx_ptr,
    row_stream_ptr,
    row_branch_ptr,
    row_mode_ptr,
    row_skip_lo_ptr,
    row_skip_hi_ptr,
    stride_qm,
    stride_qh,
    stride_om,
    stride_oh,
    stride_page,
    stride_kv,
    stride_branch,
    stride_head,
    stride_frame,
    sstride_page,
    sstride_kv,
    sstride_branch,
    stride_table,
    scale_log2,
    mid_o_ptr,
    mid_lse_ptr,
    CHUNK: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_FP8: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    NUM_HEADS: tl.constexpr,
):
    item = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    row = tl.load(work_row_ptr + item)
    if row < 0:
        return
    qb = tl.load(work_block_ptr + item)
    q_start = tl.load(row_q_start_ptr + row)
    num_q = tl.load(row_num_q_ptr + row)
    pos0 = tl.load(row_pos0_ptr + row)
    ctx = tl.load(row_ctx_ptr + row)
    stream = tl.load(row_stream_ptr + row).to(tl.int64)
    branch = tl.load(row_branch_ptr + row)
    mode = tl.load(row_mode_ptr + row)
    skip_lo = tl.load(row_skip_lo_ptr + row)
    skip_hi = tl.load(row_skip_hi_ptr + row)

    rows, is_q, q_pos, q_limit, k_end = query_block(qb, num_q, q_start, pos0, ctx, mode, CHUNK, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + rows[:, None] * stride_qm + head * stride_qh + dims[None, :], mask=is_q[:, None], other=0.0)
    num_pages = tl.cdiv(k_end, PAGE)

    per_split = tl.cdiv(num_pages, NUM_SPLITS)
    j_lo = split * per_split
    j_hi = tl.minimum(j_lo + per_split, num_pages)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    # this split's pages, around the hidden range [skip_lo, skip_hi) (skip_hi >= skip_lo)
    for j in range(j_lo, tl.minimum(j_hi, skip_lo)):
        page = tl.load(page_table_ptr + stream * stride_table + j)
        m_i, l_i, acc = _attend_page(
            q,
            m_i,
            l_i,
            acc,
            kv_ptr,
            scale_ptr,
            page,
            branch,
            head,
            q_limit,
            j * PAGE,
            stride_page,
            stride_kv,
            stride_branch,
            stride_head,
            stride_frame,
            sstride_page,
            sstride_kv,
            sstride_branch,
            scale_log2,
            PAGE,
            BLOCK_N,
            HEAD_DIM,
            IS_FP8,
            DOT_PRECISION,
        )
    for j in range(tl.maximum(skip_hi, j_lo), j_hi):
        page = tl.load(page_table_ptr + stream * stride_table + j)
        m_i, l_i, acc = _attend_page(
            q,
            m_i,
            l_i,
            acc,
            kv_ptr,
            scale_ptr,
            page,
            branch,
            head,
            q_limit,
            j * PAGE,
            stride_page,
            stride_kv,
            stride_branch,
            stride_head,
            stride_frame,
            sstride_page,
            sstride_kv,
            sstride_branch,
            scale_log2,
            PAGE,
            BLOCK_N,
            HEAD_DIM,
            IS_FP8,
            DOT_PRECISION,
        )
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if NUM_SPLITS == 1:
        tl.store(
            o_ptr + rows[:, None] * stride_om + head * stride_oh + dims[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=is_q[:, None],
        )
    else:  # partials [M, H, S, D] and their log2-sum-exp [M, H, S]; an empty split has l_i == 0 -> -inf
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        base = (rows * NUM_HEADS + head) * NUM_SPLITS + split
        tl.store(mid_o_ptr + base[:, None] * HEAD_DIM + dims[None, :], out, mask=is_q[:, None])
        tl.store(mid_lse_ptr + base, lse, mask=is_q)


@triton.jit
def _merge_splits_kernel(
    mid_o_ptr,
    mid_lse_ptr,
    o_ptr,
    num_rows,
    stride_om,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    head = tl.program_id(1)
    is_row = rows < num_rows
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    base = (rows[:, None] * NUM_HEADS + head) * NUM_SPLITS + splits[None, :]  # (R, S)
    lse = tl.load(mid_lse_ptr + base, mask=is_row[:, None], other=float("-inf"))
    top = tl.max(lse, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)  # rows no query reached (graph padding)
    w = tl.exp2(lse - top[:, None])  # (R, S)
    parts = tl.load(
        mid_o_ptr + base[:, :, None] * HEAD_DIM + dims[None, None, :], mask=is_row[:, None, None], other=0.0
    )  # (R, S, D)
    out = tl.sum(w[:, :, None] * parts, axis=1) / tl.where(tl.sum(w, axis=1) == 0.0, 1.0, tl.sum(w, axis=1))[:, None]
    tl.store(
        o_ptr + rows[:, None] * stride_om + head * stride_oh + dims[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=is_row[:, None],
    )


def num_splits_for(num_programs: int, device: torch.device) -> int:
    """Page splits per work item: enough programs for a few waves over the SMs (the grid's size only)."""
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return int(min(MAX_SPLITS, triton.next_power_of_2(max(1, target // max(1, num_programs)))))


def flow_attention_partials(
    q: torch.Tensor,
    kv: torch.Tensor,
    scale: torch.Tensor | None,
    page_table: torch.Tensor,
    rows: dict[str, torch.Tensor],
    work_row: torch.Tensor,
    work_block: torch.Tensor,
    chunk: int,
    block_m: int,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention kernel alone: (o [M, H, D], None) with one split, else the unmerged partials (mid_o [M, H, S,
    D] float32, their log2-sum-exp mid_lse [M, H, S]), which merge_splits (or a fused consumer) combines."""
    m, num_heads, head_dim = q.shape
    assert kv.dim() == 6 and kv.shape[1] == 2 and kv.shape[2] == 2 and kv.shape[3] == num_heads
    assert kv.shape[5] == head_dim and kv.stride(5) == 1 and q.stride(2) == 1
    assert page_table.dtype == torch.int32 and page_table.stride(1) == 1
    is_fp8 = kv.dtype == torch.float8_e4m3fn
    assert is_fp8 == (scale is not None) and (is_fp8 or kv.dtype == q.dtype)
    page = kv.shape[4]
    o = torch.empty_like(q)
    if work_row.numel() == 0:
        return o, None
    sstrides = scale.stride()[:3] if scale is not None else (0, 0, 0)
    splits = num_splits or num_splits_for(work_row.numel() * num_heads, q.device)
    mid_o, mid_lse = o, None
    if splits > 1:
        mid_o = torch.empty((m, num_heads, splits, head_dim), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((m, num_heads, splits), dtype=torch.float32, device=q.device)
    _flow_attention_kernel[(work_row.numel(), num_heads, splits)](
        q,
        o,
        kv,
        scale if scale is not None else q,
        page_table,
        work_row,
        work_block,
        rows["q_start"],
        rows["num_q"],
        rows["pos0"],
        rows["ctx"],
        rows["stream"],
        rows["branch"],
        rows["mode"],
        rows["skip_lo"],
        rows["skip_hi"],
        q.stride(0),
        q.stride(1),
        o.stride(0),
        o.stride(1),
        kv.stride(0),
        kv.stride(1),
        kv.stride(2),
        kv.stride(3),
        kv.stride(4),
        *sstrides,
        page_table.stride(0),
        head_dim**-0.5 * LOG2_E,
        mid_o,
        mid_lse if mid_lse is not None else o,
        CHUNK=chunk,
        PAGE=page,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=triton.next_power_of_2(page),
        IS_FP8=is_fp8,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        NUM_SPLITS=splits,
        NUM_HEADS=num_heads,
        num_warps=4,
        num_stages=2,
    )
    return (o, None) if splits == 1 else (mid_o, mid_lse)


def merge_splits(mid_o: torch.Tensor, mid_lse: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Partials [M, H, S, D] and their log2-sum-exp [M, H, S] -> o [M, H, D] in `dtype`."""
    m, num_heads, splits, head_dim = mid_o.shape
    o = torch.empty((m, num_heads, head_dim), dtype=dtype, device=mid_o.device)
    block_r = 16
    _merge_splits_kernel[(triton.cdiv(m, block_r), num_heads)](
        mid_o,
        mid_lse,
        o,
        m,
        o.stride(0),
        o.stride(1),
        HEAD_DIM=head_dim,
        NUM_SPLITS=splits,
        NUM_HEADS=num_heads,
        BLOCK_R=block_r,
        num_warps=4,
    )
    return o


def flow_attention_triton(
    q: torch.Tensor,
    kv: torch.Tensor,
    scale: torch.Tensor | None,
    page_table: torch.Tensor,
    rows: dict[str, torch.Tensor],
    work_row: torch.Tensor,
    work_block: torch.Tensor,
    chunk: int,
    block_m: int,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q [M, H, D]; kv [pages, 2, 2, H, PAGE, D]; scale [pages, 2, 2, H] fp32 (fp8 kv) or None; page_table
    [streams, max_pages] int32; rows: int32 per-virtual-row arrays q_start, num_q, pos0, ctx, stream, branch,
    mode, skip_lo, skip_hi; work_row/work_block [W] int32 -> o [M, H, D] (rows no work item covers are left
    uninitialised: every real query is covered). num_splits: page splits per item (None: from the grid size)."""
    o, mid_lse = flow_attention_partials(
        q, kv, scale, page_table, rows, work_row, work_block, chunk, block_m, num_splits
    )
    return o if mid_lse is None else merge_splits(o, mid_lse, q.dtype)


def merge_splits_ref(mid_o: torch.Tensor, mid_lse: torch.Tensor) -> torch.Tensor:
    """merge_splits in torch, float32 (rows no split reached: zeros)."""
    top = mid_lse.amax(dim=2, keepdim=True)
    top = torch.where(top == float("-inf"), torch.zeros_like(top), top)
    w = torch.exp2(mid_lse - top)  # (M, H, S)
    den = w.sum(dim=2, keepdim=True)
    return (w[..., None] * mid_o).sum(dim=2) / torch.where(den == 0, torch.ones_like(den), den)


def flow_attention_ref(
    q: torch.Tensor,
    kv: torch.Tensor,
    scale: torch.Tensor | None,
    page_table: torch.Tensor,
    rows: dict[str, torch.Tensor],
    work_row: torch.Tensor,
    work_block: torch.Tensor,
    chunk: int,
    block_m: int,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Every row at once in float32 with an explicit mask, rows padded to the longest (the CPU path and the
    kernel's test; syncs with the host, so never inside a CUDA graph)."""
    o = torch.zeros_like(q)
    page, num_heads, head_dim = kv.shape[4], q.shape[1], q.shape[2]
    live = (rows["num_q"] > 0) & (rows["stream"] >= 0)
    if not bool(live.any()):
        return o
    r = {k: v[live].long() for k, v in rows.items()}
    num_q, ctx = r["num_q"], r["ctx"]
    max_q, max_pages = int(num_q.max()), int((ctx + page - 1).div(page, rounding_mode="floor").max())
    pages = page_table[r["stream"]][:, :max_pages].long().clamp(min=0)  # (R, P); past a row's ctx: masked
    branch = r["branch"][:, None].expand_as(pages)
    k, v = kv[pages, 0, branch].float(), kv[pages, 1, branch].float()  # (R, P, H, PAGE, D)
    if scale is not None:
        k = k * scale[pages, 0, branch][..., None, None]
        v = v * scale[pages, 1, branch][..., None, None]
    num_rows = len(num_q)
    k = k.permute(0, 2, 1, 3, 4).reshape(num_rows, num_heads, -1, head_dim)  # (R, H, P * PAGE, D)
    v = v.permute(0, 2, 1, 3, 4).reshape(num_rows, num_heads, -1, head_dim)
    k_pos = torch.arange(k.shape[2])[None, None, :]
    hidden = (k_pos >= r["skip_lo"][:, None, None] * page) & (k_pos < r["skip_hi"][:, None, None] * page)
    for q0 in range(0, max_q, REF_QUERY_BLOCK):  # bounded memory for whole utterances
        offs = torch.arange(q0, min(max_q, q0 + REF_QUERY_BLOCK))
        is_q = offs[None, :] < num_q[:, None]  # (R, n)
        q_rows = torch.where(is_q, r["q_start"][:, None] + offs[None, :], 0)
        qr = q[q_rows].float().transpose(1, 2)  # (R, H, n, D)
        q_pos = (r["pos0"][:, None] + offs[None, :])[:, :, None]
        limit = torch.where(
            r["mode"][:, None, None] == 0,
            torch.minimum((q_pos // chunk + 1) * chunk, ctx[:, None, None]),
            ctx[:, None, None],
        )
        visible = ((k_pos < limit) & ~hidden) | ~is_q[:, :, None]  # padding queries: anything (output dropped)
        out = F.scaled_dot_product_attention(qr, k, v, attn_mask=visible[:, None]).transpose(1, 2)  # (R, n, H, D)
        o[q_rows[is_q]] = out[is_q].to(q.dtype)
    return o
