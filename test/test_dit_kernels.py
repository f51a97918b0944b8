"""CosyVoice3's DiT kernels (kernels/flow/flow_dit.py; Triton's interpreter on the CPU) against their torch
references: row counts that leave the last program partial, float32 and float16, padding rows of garbage; then a
paged DiT pass with every kernel forced (interpreted) against the torch pass on the tiny fixture (float32)."""

import dataclasses

import pytest
import torch
from test_fused_flow_kernels import two_passes
from test_paged_dit import NUM_PAGES, NUM_SLOTS

from light_tts.decode.dit.dit_cache import DiTCache, DiTCacheShape
from light_tts.decode.dit.paged_dit import PagedDiT
from light_tts.decode.flow.flow_inputs import Bucket
from light_tts.kernels.flow import flow_dit
from light_tts.models.cosyvoice3.config import load_model_config
from light_tts.models.cosyvoice3.flow import DiTFlow


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the float16 padding rows overflow (as they may in a graph)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("residual", [True, False])
def test_ada_modulate_equals_residual_then_modulation(dtype, residual):
    """37 rows of 96 channels (a partial column block and a partial last program); rows 30.. are padding of
    huge values, which must not leak into the others."""
    g = torch.Generator().manual_seed(0)
    m, c = 37, 96
    h = (torch.randn(m, c, generator=g) * 3 + 1).to(dtype)
    y = torch.randn(m, c, generator=g).to(dtype)
    h[30:], y[30:] = 6e4, -6e4
    gate, shift = (torch.randn(c, generator=g).to(dtype) for _ in range(2))
    scale1p = (1 + 0.3 * torch.randn(c, generator=g)).to(dtype)
    args = (gate, y) if residual else (None, None)
    got_h, got_x = flow_dit.ada_modulate_triton(h, *args, scale1p, shift, 1e-6)
    ref_h, ref_x = flow_dit.ada_modulate_ref(
        h.float(), *(a.float() if a is not None else None for a in args), scale1p.float(), shift.float(), 1e-6
    )
    assert got_h.dtype == got_x.dtype == dtype
    assert rel_err(got_h[:30], ref_h[:30]) < TOLERANCE[dtype]
    assert rel_err(got_x[:30], ref_x[:30]) < TOLERANCE[dtype]
    if not residual:
        assert got_h is h  # nothing added, nothing written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotary_head0_equals_reference(dtype):
    """Only head 0 of q and k turns; v and the other heads stay as they were (bit for bit)."""
    g = torch.Generator().manual_seed(1)
    m, heads, d = 21, 3, 32
    qkv = torch.randn(m, 3, heads, d, generator=g).to(dtype)
    angles = torch.randn(m, d, generator=g) * 3
    cos, sin = angles.cos(), angles.sin()
    got, ref = qkv.clone(), qkv.float()
    flow_dit.rotary_head0_triton(got, cos, sin)
    flow_dit.rotary_head0_ref(ref, cos, sin)
    assert rel_err(got[:, :2, 0], ref[:, :2, 0]) < TOLERANCE[dtype]
    assert torch.equal(got[:, 2], qkv[:, 2]) and torch.equal(got[:, :2, 1:], qkv[:, :2, 1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cfg_update_equals_guided_euler_step(dtype):
    """x (float32) updated in place from both branches' velocity; x into both branches' first 80 columns of the
    step input, its other columns untouched."""
    g = torch.Generator().manual_seed(2)
    mf, mel = 19, 80
    v = torch.randn(2 * mf, mel, generator=g).to(dtype)
    x0 = torch.randn(mf, mel, generator=g)
    est0 = torch.randn(2 * mf, 4 * mel, generator=g).to(dtype)
    outs = []
    for impl in (flow_dit.cfg_update_triton, flow_dit.cfg_update_ref):
        x, est_in = x0.clone(), est0.clone()
        impl(v, x, est_in, 0.0375, 0.7)
        outs.append((x, est_in))
    assert rel_err(outs[0][0], outs[1][0]) < 1e-6
    assert rel_err(outs[0][1], outs[1][1]) < TOLERANCE[dtype]
    assert torch.equal(outs[0][1][:, mel:], est0[:, mel:])


# ---- a whole paged pass ----


@pytest.fixture(scope="module")
def two_step_flow(cv3_fixture_dir):
    """The tiny fixture's DiT flow with 2 CFM steps instead of 10 (the interpreter's time; the steps are alike)."""
    cfg = load_model_config(cv3_fixture_dir)
    flow_cfg = dataclasses.replace(cfg.flow, cfm=dataclasses.replace(cfg.flow.cfm, n_timesteps=2))
    return flow_cfg, DiTFlow.from_checkpoint(flow_cfg, cfg.path("flow.pt"))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # graph padding rows hold garbage
def test_triton_pass_equals_torch_pass(two_step_flow):
    """Two passes with every kernel of PagedDiT forced (interpreted) against the torch pass: a stream's first chunk
    with its prompt condition, then its next chunk (cached keys/values, conv tails) packed with another stream's
    whole utterance, padded to a graph bucket."""
    flow_cfg, flow = two_step_flow
    shape = DiTCacheShape.from_config(flow_cfg)
    spk, passes = two_passes()
    mels = []
    for use_triton in (True, False):
        cache = DiTCache(shape, NUM_PAGES, NUM_SLOTS, torch.float32, torch.float32, torch.device("cpu"))
        cache.spks[1:3] = spk
        paged = PagedDiT(flow, cache, 400, use_triton=use_triton)
        for i, specs in enumerate(passes):
            inputs = paged.build_inputs(specs, bucket=Bucket(num_tokens=48, num_rows=3) if i else None, table_width=16)
            mel = paged(inputs)
            mels.append([mel[a : a + n] for a, n in zip(inputs.frame_starts, inputs.num_frames)])
    worst = max(rel_err(a, b) for fa, fb in zip(mels[:2], mels[2:]) for a, b in zip(fa, fb))
    print(f"triton vs torch DiT pass: worst rel L2 {worst:.2e}")
    assert worst < 1e-5
