"""The fused estimator's Triton kernels (Triton's interpreter on the CPU) against their torch references, at tiny
shapes with several programs and partial blocks; then the whole fused flow pass against today's unfused pass on
the tiny fixture model (float32, within 1e-5 relative L2)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_flow_kernels import SPECS, make_rows, page_table_for

from light_tts.decode.flow.flow_cache import FlowCache, FlowCacheShape
from light_tts.decode.flow.flow_inputs import Bucket, ChunkSpec, build_flow_inputs
from light_tts.decode.flow.paged_flow import PagedFlow
from light_tts.kernels.flow.flow_attention import flow_attention_partials, flow_attention_ref, merge_splits_ref
from light_tts.kernels.flow.flow_block_tail import block_tail_ref, block_tail_triton
from light_tts.kernels.flow.flow_cfm_step import cfm_step_ref, cfm_step_triton
from light_tts.kernels.flow.flow_qkv_store import qkv_store_ref, qkv_store_triton
from light_tts.kernels.flow.flow_tap_conv import save_rows_ref, save_rows_triton, tap_conv_ref, tap_conv_triton
from light_tts.model_dir import load_model_config
from light_tts.models.cosyvoice2.flow import Flow

H, D, C = 2, 16, 32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def norm(c: int, seed: int) -> torch.nn.LayerNorm:
    g = torch.Generator().manual_seed(seed)
    n = torch.nn.LayerNorm(c)
    with torch.no_grad():
        n.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
        n.bias.copy_(0.3 * torch.randn(c, generator=g))
    return n


@pytest.mark.parametrize(
    "kv_dtype,with_bias", [(torch.float32, False), (torch.float8_e4m3fn, False), (torch.float32, True)]
)
def test_qkv_store_equals_projection_then_store(kv_dtype, with_bias):
    """Items of full and partial pages of both branches, and a padding item (page -1); the encoder's projections
    have a bias."""
    page, num_pages = 10, 8
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, C, generator=g)
    w = torch.randn(3 * H * D, C, generator=g) * C**-0.5
    bias = torch.randn(3 * H * D, generator=g) if with_bias else None
    items = {"page": [3, 5, 0, 6, -1], "branch": [0, 0, 1, 1, 0], "row": [0, 10, 17, 27, 0], "len": [10, 7, 10, 10, 0]}
    items = {k: torch.tensor(v, dtype=torch.int32) for k, v in items.items()}
    pools, scales, qs = [], [], []
    for impl in (qkv_store_triton, qkv_store_ref):
        pool = torch.zeros(num_pages, 2, 2, H, page, D).to(kv_dtype)
        scale = torch.ones(num_pages, 2, 2, H) if kv_dtype != torch.float32 else None
        qs.append(impl(h, w, pool, scale, items, H, bias))
        pools.append(pool.float() * (scale[..., None, None] if scale is not None else 1))
        scales.append(scale)
    assert rel_err(qs[0][:37], qs[1][:37]) < 1e-6
    assert rel_err(pools[0], pools[1]) < (1e-6 if kv_dtype == torch.float32 else 0.05)
    if kv_dtype != torch.float32:
        assert torch.allclose(scales[0], scales[1], rtol=1e-6)


@pytest.mark.parametrize(
    "num_splits,with_next,dtype,act",
    [
        (1, True, torch.float32, "gelu"),
        (4, False, torch.float32, "gelu"),
        (2, True, torch.float16, "gelu"),
        (1, True, torch.float32, "silu"),
    ],
)
def test_block_tail_equals_unfused_ops(num_splits, with_next, dtype, act):
    """Merge of flash-decoding partials (or the attention output), out-projection, residual, norm, FFN (GELU: the
    estimator; SiLU: the encoder), residual, next norm: 40 rows in programs of 16 (the last one partial)."""
    g = torch.Generator().manual_seed(num_splits)
    m, hidden = 40, 4 * C
    x = torch.randn(m, C, generator=g).to(dtype)
    if num_splits == 1:
        o, lse = torch.randn(m, H, D, generator=g).to(dtype), None
    else:
        o = torch.randn(m, H, num_splits, D, generator=g)
        lse = torch.randn(m, H, num_splits, generator=g) * 3
        lse[0, 0, 1:] = float("-inf")  # splits that saw no key
    w_out, b_out = torch.randn(C, H * D, generator=g) * 0.2, torch.randn(C, generator=g) * 0.1
    w1, b1 = torch.randn(hidden, C, generator=g) * 0.2, torch.randn(hidden, generator=g) * 0.1
    w2, b2 = torch.randn(C, hidden, generator=g) * 0.1, torch.randn(C, generator=g) * 0.1
    weights = [t.to(dtype) for t in (w_out, b_out)]
    ffn = [t.to(dtype) for t in (w1, b1, w2, b2)]
    n3, nn_ = norm(C, 1).to(dtype), norm(C, 2).to(dtype) if with_next else None
    got = block_tail_triton(x, o, lse, *weights, n3, *ffn, nn_, act=act, block_m=16)
    ref = block_tail_ref(
        x.float(),
        o.float(),
        lse,
        *[t.float() for t in weights],
        norm(C, 1),
        *[t.float() for t in ffn],
        norm(C, 2) if with_next else None,
        act=act,
    )
    tol = 1e-6 if dtype == torch.float32 else 5e-3
    assert rel_err(got[0], ref[0]) < tol
    assert (got[1] is None) == (not with_next)
    if with_next:
        assert rel_err(got[1], ref[1]) < tol


def conv_case(seed: int, cin: int, cout: int):
    """Packed inputs of 3 rows, tails of their slots, taps into [x; tails[tail_read]; zero] (flow_inputs.py)."""
    g = torch.Generator().manual_seed(seed)
    n, num_slots = 40, 5
    x = torch.randn(n, cin, generator=g)
    tails = torch.randn(num_slots * 2, cin, generator=g)
    rows = [(0, 17, 1), (17, 3, 2), (20, 20, 0)]  # (first input, inputs, read slot)
    tail_read, taps = [], []
    for r, (first, num, slot) in enumerate(rows):
        tail_read += [2 * slot, 2 * slot + 1]
        for p in range(num):
            taps.append([first + q if q >= 0 else n + 2 * r + 2 + q for q in (p - 2, p - 1, p)])
    taps.append([n + 6] * 3)  # a padding output: the zero row
    save_src = torch.tensor([15, 16, 18, 19, 38, 39])
    save_dst = torch.tensor([2, 3, 4, 5, 8, 9])
    weight = torch.randn(cout, 3 * cin, generator=g) * (3 * cin) ** -0.5
    return (
        x,
        tails,
        torch.tensor(tail_read),
        torch.tensor(taps),
        weight,
        torch.randn(cout, generator=g) * 0.1,
        save_src,
        save_dst,
    )


@pytest.mark.parametrize("variant", ["plain", "time_bias", "residual_next_norm_save"])
def test_tap_conv_equals_im2col_matmul_norm_mish(variant):
    cin, cout = 48, C
    x, tails, tail_read, taps, weight, bias, save_src, save_dst = conv_case(3, cin, cout)
    g = torch.Generator().manual_seed(4)
    kwargs = {}
    if variant != "plain":
        kwargs["norm"] = norm(cout, 5)
    if variant == "time_bias":
        kwargs["add"] = torch.randn(cout, generator=g)
    if variant == "residual_next_norm_save":
        r = torch.randn(taps.shape[0], 16, generator=g)
        kwargs["res"] = (r, torch.randn(cout, 16, generator=g) * 0.25, torch.randn(cout, generator=g))
        kwargs["next_norm"] = norm(cout, 6)
    outs, saved = [], []
    for impl, extra in ((tap_conv_triton, {"block_m": 16}), (tap_conv_ref, {})):
        prev_x, prev_tails = torch.randn(40, 32, generator=torch.Generator().manual_seed(7)), torch.zeros(12, 32)
        save = (prev_x, prev_tails, save_src, save_dst) if variant == "residual_next_norm_save" else None
        outs.append(impl(x, tails.clone(), tail_read, taps, weight, bias, save=save, **kwargs, **extra))
        saved.append(prev_tails)
    assert rel_err(outs[0][0], outs[1][0]) < 1e-6
    if "next_norm" in kwargs:
        assert rel_err(outs[0][1], outs[1][1]) < 1e-6
    assert torch.equal(saved[0], saved[1])
    if variant == "residual_next_norm_save":
        assert saved[0].abs().sum() > 0


def test_save_rows_equals_index_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 48, generator=g)
    src, dst = torch.tensor([3, 4, 28, 29, 0]), torch.tensor([0, 1, 6, 7, 9])
    a, b = torch.zeros(10, 48), torch.zeros(10, 48)
    save_rows_triton(x, a, src, dst)
    save_rows_ref(x, b, src, dst)
    assert torch.equal(a, b)


def test_cfm_step_equals_projection_and_euler_update():
    g = torch.Generator().manual_seed(0)
    mf, mel = 37, 80
    h = torch.randn(2 * mf, C, generator=g)
    w, b = torch.randn(mel, C, generator=g) * 0.2, torch.randn(mel, generator=g)
    x0 = torch.randn(mf, mel, generator=g)
    outs = []
    for impl in (cfm_step_triton, cfm_step_ref):
        x, est_in = x0.clone(), torch.randn(2 * mf, 4 * mel, generator=torch.Generator().manual_seed(1))
        impl(h, w, b, x, est_in, 0.0375, 0.7)
        outs.append((x, est_in))
    assert rel_err(outs[0][0], outs[1][0]) < 1e-6
    assert rel_err(outs[0][1], outs[1][1]) < 1e-6


def test_attention_partials_merge_to_the_reference():
    """The fused path's attention leaves its split partials for block_tail; merged they are the attention."""
    page, chunk = 50, 50
    rows, work_row, work_block, m = make_rows(SPECS[:3], page, chunk, 64, num_branches=1)
    table = page_table_for(SPECS[:3], page, 20, seed=0)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(m, H, D, generator=g)
    pool = torch.randn(20, 2, 2, H, page, D, generator=g)
    mid_o, mid_lse = flow_attention_partials(q, pool, None, table, rows, work_row, work_block, chunk, 64, 2)
    assert mid_lse is not None and mid_o.shape == (m, H, 2, D)
    ref = flow_attention_ref(q, pool, None, table, rows, work_row, work_block, chunk, 64)
    assert rel_err(merge_splits_ref(mid_o, mid_lse), ref) < 1e-5


# ---- the whole fused pass ----


@pytest.fixture(scope="module")
def two_step_flow(fixture_dir):
    """The tiny fixture flow with 2 CFM steps instead of 10 (the interpreter's time; the steps are alike)."""
    cfg = load_model_config(fixture_dir)
    flow_cfg = dataclasses.replace(cfg.flow, cfm=dataclasses.replace(cfg.flow.cfm, n_timesteps=2))
    return flow_cfg, Flow.from_checkpoint(flow_cfg, cfg.path("flow.pt"))


def two_passes() -> tuple[torch.Tensor, list[list[ChunkSpec]]]:
    """Two speaker vectors (slots 1, 2) and two passes: a stream's first chunk with its prompt condition, then its
    next chunk (cached keys/values, conv tails) packed with another stream's whole utterance."""
    g = np.random.default_rng(0)
    spk = torch.randn(2, 80, generator=torch.Generator().manual_seed(0))
    cond = (g.standard_normal((50, 80)) - 5).astype(np.float32)
    passes = [
        [ChunkSpec(slot=1, read_slot=0, page_table=[0, 1], t0=0, tokens=list(range(28)), num_lookahead=3, cond=cond)],
        [
            ChunkSpec(slot=1, read_slot=1, page_table=[0, 1], t0=25, tokens=list(range(40, 68)), num_lookahead=3),
            ChunkSpec(
                slot=2,
                read_slot=0,
                page_table=[2, 3],
                t0=0,
                tokens=list(range(70, 90)),
                num_lookahead=0,
                full_attention=True,
            ),
        ],
    ]
    return spk, passes


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # graph padding rows hold garbage
def test_fused_pass_equals_unfused_pass(two_step_flow):
    """Two passes of the fused estimator (Triton kernels, interpreted) against today's unfused pass (torch): a
    stream's first chunk with its prompt condition, then its next chunk (cached keys/values, conv tails) packed with
    another stream's first chunk, padded to a graph bucket. The fused encoder runs its kernels' references (the
    interpreter is slow on rel-pos attention; its fused kernels are checked one by one above)."""
    flow_cfg, flow = two_step_flow
    shape = FlowCacheShape.from_config(flow_cfg)
    spk, passes = two_passes()
    mels = []
    for fused in (True, False):
        cache = FlowCache(shape, 8, 6, torch.float32, torch.float32, torch.device("cpu"))
        cache.spks[1:3] = spk
        paged = PagedFlow(flow, cache, 400, use_triton=False, fused=fused)
        if fused:
            paged.fused.use_triton = True  # the estimator's fused kernels, interpreted
        for i, specs in enumerate(passes):
            bucket = Bucket(num_tokens=48, num_rows=3) if i else None
            inputs = build_flow_inputs(specs, shape, 6, cache.scratch_page, cache.device, bucket, 16)
            mel = paged(inputs)
            mels.append([mel[a : a + n] for a, n in zip(inputs.frame_starts, inputs.num_frames)])
    fused_mels, ref_mels = mels[:2], mels[2:]
    worst = max(rel_err(a, b) for fa, fb in zip(fused_mels, ref_mels) for a, b in zip(fa, fb))
    print(f"fused vs unfused pass: worst rel L2 {worst:.2e}")
    assert worst < 1e-5


def test_fused_kernels_compile_for_hopper():
    """The interpreter accepts constructs a GPU compiler rejects, and cannot see register spills or shared memory:
    compile every fused launch (with fp8 pages, also the LLM kernels at Orpheus' shapes and SNAC's) for sm_90 with
    Triton's ptxas (no GPU needed), in a process without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "light_tts.bench.kernel_compile", "--only", "fp16 fp8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "29 compiled for sm_90;" in out.stdout and "; 0 over 227 KB shared" in out.stdout, out.stdout
    spills = {
        line.split(" spills ")[0]: int(line.split(" spills ")[1].split()[0]) for line in out.stdout.splitlines()[:-1]
    }
    assert len(spills) == 29, out.stdout
    # no spills, but for the nucleus sampler's 32 warps (1,024 threads cap a thread at 64 registers): 8 B, and that
    # launch measured fastest on an H100 anyway (0.60 ms at 256 rows vs 1.18 at 16 warps, docs/performance.md)
    assert {k: v for k, v in spills.items() if v and not (" llm nucleus sampler " in k and v <= 16)} == {}, out.stdout
