"""The flow's paged Triton kernels (run in Triton's interpreter on the CPU) against their torch references:
page stores (fp16/fp32 and fp8 with per-page scales), the estimator's paged attention, the encoder's paged
relative-position attention."""

import pytest
import torch

from light_tts.kernels.flow.flow_attention import flow_attention_ref, flow_attention_triton
from light_tts.kernels.flow.flow_kv_store import store_pages_ref, store_pages_triton
from light_tts.kernels.flow.flow_relpos_attention import relpos_attention_ref, relpos_attention_triton

H, D = 2, 16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def make_rows(specs, page: int, chunk: int, block_m: int, num_branches: int):
    """specs: (stream, cached frames, new frames, mode, skip_lo, skip_hi) per stream; each stream contributes one
    virtual row per branch. Returns packed row arrays, work items, page table and total query rows."""
    rows = {k: [] for k in ("q_start", "num_q", "pos0", "ctx", "stream", "branch", "mode", "skip_lo", "skip_hi")}
    work_row, work_block = [], []
    start = 0
    for branch in range(num_branches):
        for stream, cached, new, mode, lo, hi in specs:
            r = len(rows["q_start"])
            for k, v in zip(rows, (start, new, cached, cached + new, stream, branch, mode, lo, hi)):
                rows[k].append(v)
            for qb in range(-(-new // block_m)):
                work_row.append(r)
                work_block.append(qb)
            start += new
    work_row.append(-1)  # a padding item, as graphs have
    work_block.append(0)

    def as_i32(x):
        return torch.tensor(x, dtype=torch.int32)

    return {k: as_i32(v) for k, v in rows.items()}, as_i32(work_row), as_i32(work_block), start


def page_table_for(specs, page: int, num_pages: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_pages, generator=g).tolist()
    max_pages = max(-(-(c + n) // page) for _, c, n, *_ in specs)
    table = torch.full((len(specs), max_pages + 1), -1, dtype=torch.int32)
    for stream, cached, new, *_ in specs:
        count = -(-(cached + new) // page)
        table[stream, :count] = torch.tensor([perm.pop() for _ in range(count)], dtype=torch.int32)
    return table


# (stream, cached frames, new frames, mode, skip_lo, skip_hi): a first chunk, middle chunks, a final partial
# chunk, a whole utterance with full attention, a windowed stream
SPECS = [
    (0, 0, 100, 0, 99, 99),
    (1, 50, 50, 0, 99, 99),
    (2, 150, 23, 0, 99, 99),
    (3, 0, 77, 1, 99, 99),
    (4, 250, 50, 0, 1, 3),
]


@pytest.mark.parametrize(
    "dtype,block_m,num_splits", [(torch.float32, 16, 1), (torch.float32, 64, 4), (torch.float8_e4m3fn, 64, 2)]
)
def test_store_then_attend_equals_reference(dtype, block_m, num_splits):
    """One split (large passes) and page splits merged afterwards (small passes), around a hidden page range."""
    page, chunk = 50, 50
    num_pages = 40
    rows, work_row, work_block, m = make_rows(SPECS, page, chunk, block_m, num_branches=2)
    table = page_table_for(SPECS, page, num_pages, seed=0)
    g = torch.Generator().manual_seed(1)
    # strided views, as the engine passes them: q and the new keys/values are slices of one qkv projection, the
    # pool is one (CFM step, block) of the whole cache
    qkv = torch.randn(m, 3, H, D, generator=g) * torch.tensor([1.0, 3.0, 3.0])[None, :, None, None]
    q, new_kv = qkv[:, 0], qkv[:, 1:]
    pool = torch.randn(num_pages, 3, 2, 2, 2, H, page, D, generator=g).to(dtype)[:, 2, 1]
    scale = (torch.rand(num_pages, 3, 2, 2, 2, H, generator=g) + 0.5)[:, 1, 0] if dtype != torch.float32 else None
    # page writes for the new frames of every virtual row (each write starts at a page boundary)
    items = {"page": [], "branch": [], "row": [], "len": []}
    for r in range(len(rows["q_start"])):
        s, cached, new = int(rows["stream"][r]), int(rows["pos0"][r]), int(rows["num_q"][r])
        for f in range(0, new, page):
            for k, v in zip(
                items,
                (
                    int(table[s, (cached + f) // page]),
                    int(rows["branch"][r]),
                    int(rows["q_start"][r]) + f,
                    min(page, new - f),
                ),
            ):
                items[k].append(v)
    items = {k: torch.tensor(v + [-1], dtype=torch.int32) for k, v in items.items()}  # + a padding item
    pools = [pool, pool.clone()]  # the kernel writes into the strided view
    scales = [None, None] if scale is None else [scale, scale.clone()]
    pools.reverse()
    scales.reverse()
    store_pages_ref(new_kv, pools[0], scales[0], items)
    store_pages_triton(new_kv, pools[1], scales[1], items)
    if dtype == torch.float32:
        assert torch.equal(pools[0], pools[1])
    else:  # the kernel rounds half up where torch rounds half to even: at most one fp8 step apart
        assert torch.allclose(scales[0], scales[1], rtol=1e-6)
        assert (pools[0].float() - pools[1].float()).abs().max() <= 32
        deq = pools[1][int(items["page"][0]), 0, 0].float() * scales[1][int(items["page"][0]), 0, 0][:, None, None]
        assert rel_err(deq.transpose(0, 1), new_kv[:page, 0]) < 0.05  # fp8: ~3% rounding error
    out_ref = flow_attention_ref(q, pools[1], scales[1], table, rows, work_row, work_block, chunk, block_m)
    out = flow_attention_triton(q, pools[1], scales[1], table, rows, work_row, work_block, chunk, block_m, num_splits)
    assert rel_err(out, out_ref) < 1e-5


def test_attention_matches_dense_softmax():
    """The reference itself against plain dense attention for one whole-utterance row with contiguous pages."""
    page, n = 50, 120
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(n, H, D, generator=g) for _ in range(3))
    pool = torch.zeros(3, 2, 2, H, page, D)
    for p in range(3):
        span = slice(p * page, min(n, (p + 1) * page))
        pool[p, 0, 1, :, : span.stop - span.start] = k[span].transpose(0, 1)
        pool[p, 1, 1, :, : span.stop - span.start] = v[span].transpose(0, 1)
    rows, work_row, work_block, _ = make_rows([(0, 0, n, 1, 9, 9)], page, 50, 16, 1)
    rows["branch"][:] = 1
    table = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    out = flow_attention_ref(q, pool, None, table, rows, work_row, work_block, 50, 16)
    dense = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) * D**-0.5, -1)
    assert rel_err(out, torch.einsum("hqk,khd->qhd", dense, v)) < 1e-6


@pytest.mark.parametrize("page,chunk", [(25, 25), (50, 50)])
def test_relpos_attention_equals_reference(page, chunk):
    # the last stream hides its second and third pages (the context window)
    specs = [
        (0, 0, 40, 0, 0, 0),
        (1, page, 2 * page, 0, 0, 0),
        (2, 2 * page, 7, 0, 0, 0),
        (3, 0, 33, 1, 0, 0),
        (4, 4 * page, 9, 0, 1, 3),
    ]
    num_pages = 24
    rows, work_row, work_block, m = make_rows(specs, page, chunk, 16, num_branches=1)
    table = page_table_for(specs, page, num_pages, seed=3)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(m, 3, H, D, generator=g)[:, 0]  # strided, as the engine's slices of qkv and of the pool
    kv = torch.randn(num_pages, 2, 2, 1, H, page, D, generator=g)[:, 1]
    radius = 6 * page  # covers every relative position of the rows above
    pos_table = torch.randn(2 * radius - 1, H, D, generator=g)
    bias_u, bias_v = torch.randn(H, D, generator=g), torch.randn(H, D, generator=g)
    args = (q, kv, pos_table, bias_u, bias_v, table, rows, work_row, work_block, chunk)
    assert rel_err(relpos_attention_triton(*args), relpos_attention_ref(*args)) < 1e-5


def test_fused_row_kernels_equal_references():
    from light_tts.kernels.flow.flow_fused import (
        add_layer_norm_ref,
        add_layer_norm_triton,
        gather_taps_ref,
        gather_taps_triton,
        layer_norm_mish_ref,
        layer_norm_mish_triton,
        snake_ref,
        snake_triton,
    )

    g = torch.Generator().manual_seed(5)
    m, c = 37, 48  # not powers of two: masked rows and columns
    norm = torch.nn.LayerNorm(c)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c, generator=g))
        norm.bias.copy_(torch.randn(c, generator=g))
    x, delta, resid = (torch.randn(m, c, generator=g) * 3 for _ in range(3))
    bias = torch.randn(c, generator=g)
    with torch.no_grad():
        for got, want in zip(add_layer_norm_triton(x, delta, bias, norm), add_layer_norm_ref(x, delta, bias, norm)):
            assert rel_err(got, want) < 1e-5
        x[0, :4] = torch.tensor([30.0, -30.0, 0.0, 19.9])  # mish's large-argument branch and its edge
        for add, res in ((None, None), (bias, None), (None, resid)):
            assert rel_err(layer_norm_mish_triton(x, norm, add, res), layer_norm_mish_ref(x, norm, add, res)) < 1e-5
    tails = torch.randn(20, c, generator=g)
    tail_read = torch.tensor([3, 4, 10, 11], dtype=torch.int64)
    taps = torch.randint(0, m + 4 + 1, (29, 3), generator=g)  # into [x; 4 tail rows; zero]
    assert torch.equal(gather_taps_triton(x, tails, tail_read, taps), gather_taps_ref(x, tails, tail_read, taps))
    h = torch.randn(2, 5, 77, generator=g) * 4
    alpha = torch.rand(5, generator=g) + 0.1
    assert rel_err(snake_triton(h, alpha), snake_ref(h, alpha)) < 1e-6
