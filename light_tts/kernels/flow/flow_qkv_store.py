"""The estimator's attention projection fused with the page store: q, k, v = h W^T for the packed rows of one page
write, the new keys and values written straight into their page of the flow-cache pool (fp8: with the tile's
scale), q into a packed [M, H, D] tensor for the attention that follows. One launch instead of a matmul and a store.

Work items are the page writes of flow_inputs.py (page, branch, first packed row, frames <= PAGE): every new frame
of a pass lies in exactly one, so one program per (item, head) computes exactly the page tile it stores, and an fp8
tile's scale (amax / 448 over the page's frames of one head) is known inside the program. Rows of graph padding
are in no item: their q is left unset, and nothing reads it (their attention work items carry row -1).
"""

import torch
import triton
import triton.language as tl

from light_tts.kernels.flow.flow_kv_store import emulate_fp8_rounding, store_item, store_pages_ref, store_tile


@triton.jit
def _qkv_store_kernel(
    h_ptr,
    w_ptr,
    bias_ptr,
    q_ptr,
    pool_ptr,
    scale_ptr,
    item_page_ptr,
    item_branch_ptr,
    item_row_ptr,
    item_len_ptr,
    stride_hm,
    stride_qm,
    stride_qh,
    stride_page,
    stride_kv,
    stride_branch,
    stride_head,
    stride_frame,
    sstride_page,
    sstride_kv,
    sstride_branch,
    C: tl.constexpr,
    INNER: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IS_FP8: tl.constexpr,
    EMULATE_ROUNDING: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    head = tl.program_id(1)
    page, branch, row0, is_frame = store_item(
        item_page_ptr, item_branch_ptr, item_row_ptr, item_len_ptr, tl.program_id(0), BLOCK_F
    )
    if page < 0:  # graph padding
        return
    frames = tl.arange(0, BLOCK_F)
    dims = tl.arange(0, HEAD_DIM)
    rows = row0 + frames
    acc_q = tl.zeros((BLOCK_F, HEAD_DIM), tl.float32)
    acc_k = tl.zeros((BLOCK_F, HEAD_DIM), tl.float32)
    acc_v = tl.zeros((BLOCK_F, HEAD_DIM), tl.float32)
    w_rows = head * HEAD_DIM + dims  # this head's rows of W_q; W_k and W_v follow at INNER and 2 INNER
    for k0 in range(0, C, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(h_ptr + rows[:, None] * stride_hm + ks[None, :], mask=is_frame[:, None], other=0.0)
        w = w_ptr + w_rows[:, None] * C + ks[None, :]  # [D, BLOCK_K] tiles of W [3 INNER, C] (row-major)
        acc_q += tl.dot(a, tl.trans(tl.load(w)), input_precision=DOT_PRECISION)
        acc_k += tl.dot(a, tl.trans(tl.load(w + INNER * C)), input_precision=DOT_PRECISION)
        acc_v += tl.dot(a, tl.trans(tl.load(w + 2 * INNER * C)), input_precision=DOT_PRECISION)
    if HAS_BIAS:  # the encoder's projections have biases
        acc_q += tl.load(bias_ptr + w_rows).to(tl.float32)[None, :]
        acc_k += tl.load(bias_ptr + INNER + w_rows).to(tl.float32)[None, :]
        acc_v += tl.load(bias_ptr + 2 * INNER + w_rows).to(tl.float32)[None, :]
    act = q_ptr.dtype.element_ty  # the projection's rounding, as the unfused matmul's output
    tl.store(
        q_ptr + rows[:, None] * stride_qm + head * stride_qh + dims[None, :], acc_q.to(act), mask=is_frame[:, None]
    )
    store_tile(
        pool_ptr,
        scale_ptr,
        acc_k.to(act),
        page,
        0,
        branch,
        head,
        frames,
        is_frame,
        dims,
        stride_page,
        stride_kv,
        stride_branch,
        stride_head,
        stride_frame,
        sstride_page,
        sstride_kv,
        sstride_branch,
        IS_FP8,
        EMULATE_ROUNDING,
    )
    store_tile(
        pool_ptr,
        scale_ptr,
        acc_v.to(act),
        page,
        1,
        branch,
        head,
        frames,
        is_frame,
        dims,
        stride_page,
        stride_kv,
        stride_branch,
        stride_head,
        stride_frame,
        sstride_page,
        sstride_kv,
        sstride_branch,
        IS_FP8,
        EMULATE_ROUNDING,
    )


def _block_k(c: int) -> int:
    return next(b for b in (64, 32, 16) if c % b == 0)


def qkv_store_triton(
    h: torch.Tensor,
    w_qkv: torch.Tensor,
    pool: torch.Tensor,
    scale: torch.Tensor | None,
    items: dict[str, torch.Tensor],
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """h [M, C] (the block's normed input), w_qkv [3 H D, C] (W_q; W_k; W_v) and its bias [3 H D] or None, pool
    [pages, 2, branches, H, PAGE, D] (+ scale [pages, 2, branches, H] fp32 when fp8), items: int32 page (-1:
    padding), branch, row, len -> q [M, H, D]; the keys and values are stored in place."""
    m, c = h.shape
    head_dim = w_qkv.shape[0] // (3 * num_heads)
    assert h.stride(1) == 1 and w_qkv.is_contiguous() and w_qkv.shape == (3 * num_heads * head_dim, c)
    assert c % 16 == 0 and head_dim >= 16 and head_dim & (head_dim - 1) == 0
    assert pool.stride(5) == 1 and pool.shape[3] == num_heads and pool.shape[5] == head_dim
    is_fp8 = pool.dtype == torch.float8_e4m3fn
    assert is_fp8 == (scale is not None)
    q = torch.empty((m, num_heads, head_dim), dtype=h.dtype, device=h.device)
    num_items = items["page"].numel()
    if num_items == 0:
        return q
    sstrides = scale.stride()[:3] if scale is not None else (0, 0, 0)
    _qkv_store_kernel[(num_items, num_heads)](
        h,
        w_qkv,
        bias if bias is not None else w_qkv,
        q,
        pool,
        scale if scale is not None else q,
        items["page"],
        items["branch"],
        items["row"],
        items["len"],
        h.stride(0),
        q.stride(0),
        q.stride(1),
        pool.stride(0),
        pool.stride(1),
        pool.stride(2),
        pool.stride(3),
        pool.stride(4),
        *sstrides,
        C=c,
        INNER=num_heads * head_dim,
        HEAD_DIM=head_dim,
        BLOCK_F=triton.next_power_of_2(pool.shape[4]),
        BLOCK_K=_block_k(c),
        IS_FP8=is_fp8,
        EMULATE_ROUNDING=emulate_fp8_rounding(),
        DOT_PRECISION="ieee" if h.dtype == torch.float32 else "tf32",
        HAS_BIAS=bias is not None,
        num_warps=8,
    )
    return q


def qkv_store_ref(
    h: torch.Tensor,
    w_qkv: torch.Tensor,
    pool: torch.Tensor,
    scale: torch.Tensor | None,
    items: dict[str, torch.Tensor],
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unfused path: one matmul, then the page store."""
    m = h.shape[0]
    qkv = torch.nn.functional.linear(h, w_qkv, bias).view(m, 3, num_heads, -1)
    store_pages_ref(qkv[:, 1:], pool, scale, items)
    return qkv[:, 0]
