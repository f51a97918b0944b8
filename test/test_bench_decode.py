"""The decode bench's CosyVoice3 parts (bench/decode.py's chunks and throughput sections, the DiT roofline): the
analytic FLOPs against the model facts' counts, and the throughput section on the tiny CosyVoice3 fixture, CPU.
Before, the throughput section timed and counted CosyVoice2's HiFT on any engine and failed on CosyVoice3's."""

from types import SimpleNamespace

import pytest

from light_tts.bench.engines.decode_roofline import dit_flow_flops
from light_tts.models.cosyvoice3.config import DiTFlowConfig


def test_dit_flow_flops_match_the_model_facts():
    """shared/docs/cosyvoice3-model.md (torch's FLOP counter at the released dimensions): one estimator call on the
    CFG batch of 2 over T frames costs 0.756 GFLOP x T + 0.18 MFLOP x T^2 beside a constant 0.57 GFLOP (the time
    embedding and AdaLN modulations, which depend on the CFM step only). 10 steps of a 2-second chunk alone."""
    cfg = SimpleNamespace(flow=DiTFlowConfig())  # the released dimensions
    frames = 100
    want = 10 * (0.756e9 * frames + 0.18e6 * frames**2)
    got = dit_flow_flops(cfg, rows=1, new_tokens=frames // 2, cached_tokens=0)
    assert got == pytest.approx(want, rel=1e-2)
    # cached frames add attention only: 4 x 1024 per block, CFG branch and frame pair
    more = dit_flow_flops(cfg, rows=1, new_tokens=frames // 2, cached_tokens=25) - got
    assert more == pytest.approx(10 * 22 * 4 * 2 * frames * 50 * 1024)


def test_throughput_section_runs_on_cosyvoice3(cv3_fixture_dir):
    import torch

    from light_tts.bench.decode import section_throughput
    from light_tts.bench.engines.decode_parts import make_engine, model_config

    torch.set_num_threads(1)
    cfg = model_config(cv3_fixture_dir)
    engine = make_engine(cfg, "fp32", None, graphs=False, num_pages=8, max_batch_size=4, device="cpu", variant="today")
    row = section_throughput(cfg, engine, [1], context_s=1.0)[1]
    assert row["flow_ms"] > 0 and row["hift_ms"] > 0 and 0 < row["hift_share"] < 1
    assert row["flow"]["tflops"] > 0 and row["hift"]["tflops"] > 0 and row["audio_s_per_s"] > 0


def test_memory_capacity_of_the_dit_cache():
    """The memory section on a CosyVoice3 directory (it read CosyVoice2's cache geometry): a DiT page holds one
    second of a stream's keys and values for 10 CFM steps x 22 blocks x 2 CFG branches x 1024 channels, 90 MB in
    float16, half (plus per-head scales) in fp8; a 10-s stream after a shared 5-s prompt owns 11 pages."""
    from light_tts.bench.decode import memory_capacity

    cfg = SimpleNamespace(family="cosyvoice3", flow=DiTFlowConfig())
    out = memory_capacity(cfg, free_bytes=80 * 10**9)
    assert out["float16"]["mb_per_page"] == 10 * 22 * 2 * 2 * 50 * 1024 * 2 / 1e6 == 90.112
    assert out["fp8_e4m3"]["mb_per_page"] == pytest.approx(90.112 / 2, rel=2e-3)
    assert out["float16"]["streams_of_10s_shared_5s_prompt"] == int(0.85 * 80e9) // 90_112_000 // 11 == 68
