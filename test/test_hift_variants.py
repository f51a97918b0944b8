"""HiFT's fast-path variants on the tiny fixture model (CPU): counter-based noise (the kernel against its Philox
reference; a request's audio the same alone and batched), the half-precision convolution stack within its stated
bound, and HiFT one step behind the flow (overlap: the same audio, every chunk delivered, aborts while deferred)."""

import numpy as np
import pytest
import torch
from test_decode_engine import (
    REL_TOL,
    check_against_reference,
    eager_record,
    make_requests,
    new_engine,
    run_until_done,
)

from light_tts.kernels.flow.hift_noise import keyed_noise_ref, keyed_noise_triton
from light_tts.model_dir import load_model_config
from light_tts.models.cosyvoice2.hift import HiFT

HALF_AUDIO_BOUND = 5e-3  # relative L2 of fp16-conv HiFT audio against fp32 (measured 5.4e-4 on the tiny model)


@pytest.fixture(scope="module")
def cfg(fixture_dir):
    return load_model_config(fixture_dir)


def test_keyed_noise_kernel_equals_philox_reference():
    seeds = torch.tensor([3, 123456789012345, -7], dtype=torch.int64)
    offsets = torch.tensor([0, 480 * 17, 3840], dtype=torch.int64)
    phase, noise = keyed_noise_triton(seeds, offsets, 300, 9)
    ref_phase, ref_noise = keyed_noise_ref(seeds, offsets, 300, 9)
    assert torch.equal(phase, ref_phase) and phase[:, 0].abs().sum() == 0
    assert (noise - ref_noise).abs().max() < 1e-5  # Box-Muller's log/cos rounding
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05


def test_keyed_noise_depends_on_the_request_and_sample_only():
    """Alone or in a batch, and from any chunk boundary: a sample's noise is the same."""
    seeds = torch.tensor([11, 12, 13], dtype=torch.int64)
    offsets = torch.tensor([960, 0, 4800], dtype=torch.int64)
    _, batched = keyed_noise_ref(seeds, offsets, 500, 9)
    _, alone = keyed_noise_ref(seeds[1:2], offsets[1:2], 500, 9)
    _, later = keyed_noise_ref(seeds[:1], offsets[:1] + 100, 400, 9)  # the same request's next chunk
    assert torch.equal(batched[1], alone[0]) and torch.equal(batched[0, 100:], later[0])
    assert not torch.equal(batched[0], batched[1])


def test_half_precision_hift_within_its_bound(cfg):
    """fp16 convolution stack (source, STFT and iSTFT in fp32) against fp32 HiFT, the same keyed noise."""
    hift = HiFT.from_checkpoint(cfg.hift, cfg.path("hift.pt"))
    half = HiFT.from_checkpoint(cfg.hift, cfg.path("hift.pt"))
    half.set_conv_dtype(torch.float16)
    mel = torch.randn(1, cfg.hift.in_channels, 40, generator=torch.Generator().manual_seed(0)) - 4
    keys = (torch.tensor([5]), torch.tensor([9600]))
    ref, _ = hift.inference(mel, noise_keys=keys)
    got, _ = half.inference(mel, noise_keys=keys)
    err = float((got - ref).norm() / ref.norm())
    print(f"fp16 HiFT vs fp32: audio rel L2 {err:.2e}")
    assert got.dtype == torch.float32 and err < HALF_AUDIO_BOUND


def stream_audio(engine, reqs, staggered: bool) -> dict[str, np.ndarray]:
    for req_id, prompt, _tokens, seed, stream, speed, _push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
    outputs = run_until_done(engine, {r[0]: (r[2], r[6], i % 3 if staggered else 0) for i, r in enumerate(reqs)})
    assert all(o.error is None for outs in outputs.values() for o in outs)
    return {k: np.concatenate([o.audio for o in v]) for k, v in outputs.items()}


def test_keyed_noise_makes_a_request_the_same_alone_and_batched(cfg):
    """With keyed noise (and the fused estimator's references), a stream's audio does not depend on its
    batch-mates or on which steps its chunks ran in."""
    reqs = make_requests(cfg)[:3]
    alone = stream_audio(new_engine(cfg, "fixed", keyed_noise=True, fused_flow=True), reqs[:1], False)
    batched = stream_audio(new_engine(cfg, "fixed", keyed_noise=True, fused_flow=True), reqs, True)
    a, b = alone[reqs[0][0]], batched[reqs[0][0]]
    assert len(a) == len(b)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    print(f"keyed noise: alone vs batched rel L2 {err:.2e}")
    assert err < 1e-6


def test_overlapped_hift_defers_middle_chunks_without_changing_audio(cfg):
    """HiFT one step behind the flow: first and final chunks at once, middle chunks a step later; every request
    gets the unbatched reference's audio, and a request aborted with a deferred chunk gets nothing more."""
    engine = new_engine(cfg, "fixed", overlap_hift=True)
    reqs = make_requests(cfg)[2:5]  # one stream ends before its first hop
    for req_id, prompt, _tokens, seed, stream, speed, _push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
    feeds = {r[0]: (r[2], r[6], i % 3) for i, r in enumerate(reqs)}
    deferred_seen = False
    original = engine.hift_stage.vocode

    def watch(jobs, outputs):
        nonlocal deferred_seen
        done = original(jobs, outputs)
        deferred_seen |= engine.hift_stage.has_pending()
        return done

    engine.hift_stage.vocode = watch
    outputs = run_until_done(engine, feeds)
    assert deferred_seen and not engine.hift_stage.has_pending()
    assert check_against_reference(engine, reqs, outputs) < REL_TOL
    # an abort while its chunk is deferred
    req_id, prompt, tokens, seed, *_ = reqs[2]
    engine.add_request(req_id, prompt, seed, True)
    engine.push_tokens(req_id, tokens[:120], False)
    while not engine.hift_stage.has_pending():
        engine.step()
    engine.abort(req_id)
    assert not engine.has_work() and engine.step() == []
    engine.pool.check()
    assert engine.pool.num_outstanding == 0 and engine.slots.num_free == engine.slots.num_slots - 2


@pytest.mark.parametrize("keyed", [False, True])
def test_hift_graphs_replay_middle_chunks_with_the_same_audio(cfg, keyed):
    """HiFT's graphs (hift_graph.py) replayed through their static buffers (rows padded to a bucket, outputs copied
    out), with generator-drawn or keyed noise: the streams' audio is the eager engine's, and middle chunks replay."""
    from light_tts.decode.engine_setup import capture_hift_graphs

    reqs = make_requests(cfg)[:3]
    eager = stream_audio(new_engine(cfg, "fixed", keyed_noise=keyed), reqs, True)
    engine = new_engine(cfg, "fixed", keyed_noise=keyed)
    capture_hift_graphs(engine, record=eager_record)
    graphed = stream_audio(engine, reqs, True)
    graphs = engine.hift.keyed_runner if keyed else engine.hift.runner
    assert graphs.num_replays > 0 and graphs.num_eager > 0  # middle chunks; first and final ones eagerly
    for req_id, audio in eager.items():
        assert len(graphed[req_id]) == len(audio)
        assert np.linalg.norm(graphed[req_id] - audio) / np.linalg.norm(audio) < REL_TOL
