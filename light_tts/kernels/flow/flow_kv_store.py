"""Writes the new frames' keys and values of packed rows into their pages of the flow-cache pool (in place).

Every write starts at a page boundary (chunks end on chunk boundaries, and a page is one chunk), so a write item is
(page, branch, first packed row, number of frames <= PAGE) and one program handles one item's (key or value, head)
tile. For an fp8 pool the program also sets the tile's scale (amax / 448): a page is written by exactly one pass,
so its scale never has to change afterwards.
"""

import os

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@triton.jit
def _round_to_e4m3(x):
    """x (fp32, |x| <= 448) rounded to the nearest float8_e4m3fn value, in fp32 arithmetic, so that the cast that
    follows is exact (Triton's interpreter rounds some casts wrongly; GPUs cast natively instead)."""
    a = tl.abs(x)
    e = tl.maximum(tl.floor(tl.log2(tl.where(a > 0, a, 1.0))), -6.0)  # subnormals below 2^-6 share its spacing
    step = tl.exp2(e - 3.0)  # 3 mantissa bits
    r = tl.floor(a / step + 0.5) * step
    return tl.where(x < 0, -r, r)


@triton.jit
def store_tile(
    pool_ptr,
    scale_ptr,
    x,
    page,
    which,
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
    IS_FP8: tl.constexpr,
    EMULATE_ROUNDING: tl.constexpr,
):
    """Writes one (page, key or value, branch, head) tile x [BLOCK_F, D] (its first rows are the page's frames);
    an fp8 pool also gets the tile's scale (amax / 448). Shared by the page store and the fused QKV projection."""
    dst = (
        pool_ptr
        + page.to(tl.int64) * stride_page
        + which * stride_kv
        + branch * stride_branch
        + head * stride_head
        + frames[:, None] * stride_frame
        + dims[None, :]
    )
    if IS_FP8:
        xf = tl.where(is_frame[:, None], x.to(tl.float32), 0.0)
        amax = tl.max(tl.max(tl.abs(xf), axis=1), axis=0)
        scale = tl.where(amax > 0, amax / 448.0, 1.0)
        y = xf / scale
        if EMULATE_ROUNDING:
            y = _round_to_e4m3(y)
        tl.store(dst, y.to(pool_ptr.dtype.element_ty), mask=is_frame[:, None])
        tl.store(
            scale_ptr + page.to(tl.int64) * sstride_page + which * sstride_kv + branch * sstride_branch + head, scale
        )
    else:
        tl.store(dst, x.to(pool_ptr.dtype.element_ty), mask=is_frame[:, None])


@triton.jit
def store_item(item_page_ptr, item_branch_ptr, item_row_ptr, item_len_ptr, item, BLOCK_F: tl.constexpr):
    """A page write item: its page (-1: graph padding), branch, first packed row, and which of BLOCK_F frames are
    its own."""
    page = tl.load(item_page_ptr + item)
    branch = tl.load(item_branch_ptr + item)
    row0 = tl.load(item_row_ptr + item).to(tl.int64)
    is_frame = tl.arange(0, BLOCK_F) < tl.load(item_len_ptr + item)
    return page, branch, row0, is_frame


@triton.jit
def _store_kernel(
    src_ptr,
    pool_ptr,
    scale_ptr,
    item_page_ptr,
    item_branch_ptr,
    item_row_ptr,
    item_len_ptr,
    stride_sm,
    stride_skv,
    stride_sh,
    stride_page,
    stride_kv,
    stride_branch,
    stride_head,
    stride_frame,
    sstride_page,
    sstride_kv,
    sstride_branch,
    PAGE: tl.constexpr,
    BLOCK_F: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    IS_FP8: tl.constexpr,
    EMULATE_ROUNDING: tl.constexpr,
):
    which = tl.program_id(1) // NUM_HEADS  # 0 keys, 1 values
    head = tl.program_id(1) % NUM_HEADS
    page, branch, row0, is_frame = store_item(
        item_page_ptr, item_branch_ptr, item_row_ptr, item_len_ptr, tl.program_id(0), BLOCK_F
    )
    if page < 0:  # graph padding
        return
    frames = tl.arange(0, BLOCK_F)
    dims = tl.arange(0, HEAD_DIM)
    x = tl.load(
        src_ptr + (row0 + frames)[:, None] * stride_sm + which * stride_skv + head * stride_sh + dims[None, :],
        mask=is_frame[:, None],
        other=0.0,
    )
    store_tile(
        pool_ptr,
        scale_ptr,
        x,
        page,
        which,
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


def emulate_fp8_rounding() -> bool:
    """Triton's interpreter rounds some fp8 casts wrongly: round in fp32 arithmetic first there."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def store_pages_triton(
    src: torch.Tensor, pool: torch.Tensor, scale: torch.Tensor | None, items: dict[str, torch.Tensor]
) -> None:
    """src [M, 2, H, D] (the keys and values of packed rows; may be a strided view of a qkv projection); pool
    [pages, 2, branches, H, PAGE, D]; scale [pages, 2, branches, H] fp32 for an fp8 pool, else None; items: int32
    arrays page (-1: padding), branch, row (first packed row), len (frames, <= PAGE)."""
    _, two, num_heads, head_dim = src.shape
    assert two == 2 and src.stride(3) == 1 and pool.stride(5) == 1 and pool.shape[3] == num_heads
    is_fp8 = pool.dtype == torch.float8_e4m3fn
    assert is_fp8 == (scale is not None)
    num_items = items["page"].numel()
    if num_items == 0:
        return
    page = pool.shape[4]
    sstrides = scale.stride()[:3] if scale is not None else (0, 0, 0)
    _store_kernel[(num_items, 2 * num_heads)](
        src,
        pool,
        scale if scale is not None else src,
        items["page"],
        items["branch"],
        items["row"],
        items["len"],
        src.stride(0),
        src.stride(1),
        src.stride(2),
        pool.stride(0),
        pool.stride(1),
        pool.stride(2),
        pool.stride(3),
        pool.stride(4),
        *sstrides,
        PAGE=page,
        BLOCK_F=triton.next_power_of_2(page),
        HEAD_DIM=head_dim,
        NUM_HEADS=num_heads,
        IS_FP8=is_fp8,
        EMULATE_ROUNDING=emulate_fp8_rounding(),
        num_warps=4,
    )


def store_pages_ref(
    src: torch.Tensor, pool: torch.Tensor, scale: torch.Tensor | None, items: dict[str, torch.Tensor]
) -> None:
    for page, branch, row, n in zip(*(items[k].tolist() for k in ("page", "branch", "row", "len"))):
        if page < 0:
            continue
        tile = src[row : row + n].permute(1, 2, 0, 3)  # (2, H, n, D)
        if scale is None:
            pool[page, :, branch, :, :n] = tile.to(pool.dtype)
            continue
        amax = tile.float().abs().amax(dim=(2, 3))  # (2, H)
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        pool[page, :, branch, :, :n] = (tile.float() / s[:, :, None, None]).to(pool.dtype)
        scale[page, :, branch] = s
