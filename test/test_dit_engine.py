"""The CosyVoice3 decode engine (DiT flow, causal HiFT) against its unbatched reference (the family's token2wav
session / offline) on the tiny CosyVoice3 fixture, CPU, float32: packed steps with streams and whole utterances
(speed changes included), shared voice prefixes, a vocoder failure isolated to its request."""

import pytest
from test_decode_engine import (
    LIMITS,
    check_against_reference,
    eager_record,
    make_requests,
    run_packed,
    run_shared_prefix,
    run_until_done,
)

from light_tts.decode.dit.dit_engine import DiTDecodeEngine
from light_tts.decode.engine_setup import EngineLimits
from light_tts.families import family_named
from light_tts.token2wav import HopPolicy

# the vocoder turns mel rounding into audio differences (f0 drives an accumulated phase): the packed pass's mel is
# within 1e-7 of the reference's (test_paged_dit.py), which moves this tiny model's audio by up to ~4e-4; the parity
# fixture's audio tolerance
REL_TOL = 1e-3


@pytest.fixture(scope="module")
def cfg(cv3_fixture_dir):
    return family_named("cosyvoice3").load_model_config(cv3_fixture_dir)


def new_engine(cfg, hop="growing", **limits) -> DiTDecodeEngine:
    return family_named("cosyvoice3").decode_engine(
        cfg,
        max_batch_size=16,
        hop_policy=HopPolicy(hop),
        limits=EngineLimits(**{**LIMITS.__dict__, **limits}),
        clock=lambda: 0.0,
    )


def test_packed_steps_equal_unbatched(cfg, monkeypatch):
    """Streams (growing hops) and whole utterances with a speed change, staggered arrivals; HiFT passes of at most
    HIFT_MAX_ROWS rows (2 here: the warm-up sizes memory for that many, whatever a step holds)."""
    import light_tts.decode.dit.dit_engine as dit_engine

    rows, original = [], dit_engine.vocode

    def recording(hift, states, mels, finalize):
        rows.append(len(mels))
        return original(hift, states, mels, finalize)

    monkeypatch.setattr(dit_engine, "HIFT_MAX_ROWS", 2)
    monkeypatch.setattr(dit_engine, "vocode", recording)
    engine = new_engine(cfg)
    assert isinstance(engine, DiTDecodeEngine)
    worst = run_packed(engine, cfg)
    print(f"worst chunk rel L2 {worst:.2e}")
    assert worst < REL_TOL
    assert max(rows) == 2  # batched, and split


def test_shared_prefix_equals_unshared(cfg):
    """Streams of one voice share its prompt's first pages and the conv context saved at their end."""
    worst, _, _ = run_shared_prefix(new_engine(cfg, "fixed"), cfg)
    assert worst < REL_TOL


def test_vocoder_failure_fails_only_its_request(cfg, monkeypatch):
    import light_tts.decode.dit.dit_engine as dit_engine

    engine = new_engine(cfg, "fixed")
    reqs = make_requests(cfg)[:2]
    feeds = {}
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, 0)
    original = dit_engine.vocode

    def failing(hift, states, mels, finalize):
        if len(mels) > 1 or mels[0].shape[2] == 2 * (25 + 20):  # r0's first chunk (25 + pad 20 tokens)
            raise RuntimeError("injected")
        return original(hift, states, mels, finalize)

    monkeypatch.setattr(dit_engine, "vocode", failing)
    outputs = run_until_done(engine, feeds)
    assert outputs["r0"][-1].error and "injected" in outputs["r0"][-1].error
    monkeypatch.setattr(dit_engine, "vocode", original)
    assert check_against_reference(engine, reqs[1:], {"r1": outputs["r1"]}) < REL_TOL
    engine.pool.check()
    assert not engine.requests


def test_cpu_pool_holds_the_longest_stream(cfg):
    """On a CPU host the DiT's slots (positional-conv tails of every CFM step, 642 of them by default) take more
    than the CPU pool's bytes; the pool still holds the longest stream the limits admit, so a bistream request
    (bounded by max_stream_tokens alone) is not refused as too large (it was, with 8 pages)."""
    import torch

    from light_tts.decode.dit.dit_cache import DiTCacheShape
    from light_tts.decode.engine_setup import cpu_pool_pages

    limits = EngineLimits()  # the server's defaults: 30-s prompts, 1500-token streams
    shape = DiTCacheShape.from_config(cfg.flow)
    num_slots = 2 + limits.max_streams + limits.max_prefixes
    assert cpu_pool_pages(shape, limits, num_slots, torch.float32, torch.float32) >= limits.max_stream_pages == 91


@pytest.mark.parametrize("hop", ["growing", "fixed"])
def test_hift_graphs_serve_every_non_final_chunk(cfg, hop):
    """The causal HiFT's graphs (hift_graphs.py), captured for the shapes the engine derives from its hop policy
    and the prompt pads, replayed through static buffers (row padding, copies out): every non-final pass of the
    streams finds its graph, and the audio is the reference's."""
    from light_tts.decode.dit.hift_graphs import capture_hift_graphs
    from light_tts.decode.hift.hift_graph import ROW_BUCKETS, bucket

    engine = new_engine(cfg, hop)
    first, middle = engine.chunk_frames()
    assert first == [2 * (25 + pad) for pad in range(25)]
    assert middle == ([100, 200] if hop == "growing" else [50])  # 25 -> 50 -> 100 tokens, 2 mel frames a token
    graphs = capture_hift_graphs(engine.hift, first, middle, 16, record=eager_record)
    engine.hift.runner = graphs
    passes, run = [], graphs.run
    graphs.run = lambda key, *x: (passes.append((bucket(x[0].shape[0], ROW_BUCKETS), key)), run(key, *x))[1]
    worst = run_packed(engine, cfg)
    assert worst < REL_TOL
    assert passes and [p for p in passes if p not in graphs.calls] == []
    assert graphs.num_replays == len(passes)
    assert {rows for rows, _ in passes} != {1}  # padded to a bucket: some passes had several rows


# fp16 convolution stack against float32, audio relative L2 (measured 5.5e-3 per chunk through the engine on the tiny
# model, whose random weights make the log-magnitude head large; CosyVoice2's tiny HiFT measures 5.4e-4)
HALF_AUDIO_BOUND = 1e-2


def test_half_precision_hift_within_its_bound(cfg):
    """hift_half (the GPU default) runs the causal HiFT's convolution stack in fp16: every chunk of the streams and
    whole utterances stays within the bound of the float32 reference; the f0 predictor stays float64."""
    import torch

    engine = new_engine(cfg, "fixed", hift_half=True)
    assert engine.hift.conv_dtype == torch.float16 and engine.hift.conv_post.weight.dtype == torch.float16
    assert engine.hift.f0_predictor.classifier.weight.dtype == torch.float64
    worst = run_packed(engine, cfg)
    print(f"fp16 causal HiFT: worst chunk rel L2 {worst:.2e}")
    assert 0 < worst < HALF_AUDIO_BOUND
