"""The batched decode engine against the unbatched reference (Token2WavSession / Token2Wav.offline) on the tiny
fixture model, CPU, float32: same audio per request to float rounding, whatever the batch it ran in."""

import numpy as np
import pytest
import torch

import light_tts.decode.engine as engine_module
from light_tts.decode.batch import stack_flow_states
from light_tts.decode.cuda_graph import EstimatorGraphs
from light_tts.decode.engine import AudioOutput, DecodeEngine, to_int16
from light_tts.decode.hift_graph import HiFTGraphs
from light_tts.frontend.prompt import Prompt
from light_tts.model_dir import load_model_config
from light_tts.models.flow.cache import EstimatorCache
from light_tts.token2wav import HopPolicy

# (prompt tokens, utterance tokens, seed, stream, speed, tokens per push); lengths chosen so that streams end on
# and off chunk boundaries, before their first hop, and with first chunks of equal and different shapes
REQUESTS = [
    (30, 140, 1, True, 1.0, 25),
    (40, 135, 2, True, 1.0, 1000),  # same first-chunk input length as the one above (30+45+3 = 40+35+3)
    (55, 96, 3, True, 1.0, 30),
    (12, 20, 4, True, 1.0, 5),  # ends before its first hop: one final chunk
    (30, 160, 5, True, 1.0, 20),
    (66, 64, 6, False, 1.0, 9),
    (25, 64, 7, False, 1.0, 64),  # same flow input length as the one above (no batching across prompts lost)
    (48, 51, 8, False, 1.3, 17),
]
REL_TOL = 1e-5


def make_prompt(num_tokens: int, vocab: int, seed: int) -> Prompt:
    g = np.random.default_rng(seed)
    return Prompt(text_tokens=np.zeros(3, np.int32),
                  speech_tokens=g.integers(0, vocab, num_tokens).astype(np.int32),
                  embedding=g.standard_normal(192).astype(np.float32),
                  mel=(g.standard_normal((2 * num_tokens, 80)) - 5).astype(np.float32))


@pytest.fixture(scope="module")
def setup(fixture_dir):
    cfg = load_model_config(fixture_dir)
    engine = DecodeEngine(cfg, max_batch_size=16, hop_policy=HopPolicy("growing"))
    vocab = cfg.flow.vocab_size
    reqs = []
    for i, (p, n, seed, stream, speed, push) in enumerate(REQUESTS):
        tokens = np.random.default_rng(100 + i).integers(0, vocab, n).tolist()
        reqs.append((f"r{i}", make_prompt(p, vocab, 10 + i), tokens, seed, stream, speed, push))
    return cfg, engine, reqs


def reference(engine: DecodeEngine, prompt, tokens, seed, stream, speed) -> list[np.ndarray]:
    if not stream:
        return [engine.t2w.offline(tokens, prompt, seed, speed)]
    session = engine.t2w.session(prompt, seed, engine.hop_policy)
    return session.feed(tokens) + [session.finish()]


def run_until_done(engine: DecodeEngine, feeds: dict) -> tuple[dict[str, list[AudioOutput]], list[int]]:
    """Pushes each request's tokens a slice per step (staggered arrivals) and steps until nothing is left."""
    outputs: dict[str, list[AudioOutput]] = {}
    batch_sizes = []
    step = 0
    while engine.num_active():
        for req_id, (tokens, push, delay) in feeds.items():
            start = (step - delay) * push
            if 0 <= start < len(tokens) or (start == len(tokens) and not tokens):
                engine.push_tokens(req_id, tokens[start:start + push], is_last=start + push >= len(tokens))
        produced = engine.step()
        batch_sizes.append(len(produced))
        for out in produced:
            outputs.setdefault(out.req_id, []).append(out)
        step += 1
        assert step < 500
    return outputs, batch_sizes


@pytest.mark.parametrize("hop", ["growing", "fixed"])
def test_batched_equals_unbatched(setup, hop, monkeypatch):
    cfg, engine, reqs = setup
    engine.hop_policy = HopPolicy(hop)
    pads = []  # left pads of the flow batches: requests with different cache lengths must run together

    def spy_stack(states, ratio):
        state = stack_flow_states(states, ratio)
        pads.append(None if state.num_pad is None else state.num_pad.tolist())
        return state

    monkeypatch.setattr(engine_module, "stack_flow_states", spy_stack)
    feeds = {}
    for i, (req_id, prompt, tokens, seed, stream, speed, push) in enumerate(reqs):
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, i % 3)  # arrivals staggered over three steps
    outputs, batch_sizes = run_until_done(engine, feeds)
    print("outputs per step", batch_sizes, "flow batch pads", pads)
    assert max(batch_sizes) >= 4, batch_sizes  # requests really ran together
    if hop == "fixed":  # equal 28-token chunks at different offsets: one padded batch
        assert any(p is not None and len(set(p)) > 1 for p in pads), pads
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        outs = outputs[req_id]
        assert all(o.error is None for o in outs)
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        expected = reference(engine, prompt, tokens, seed, stream, speed)
        assert len(outs) == len(expected), req_id
        for got, want in zip(outs, expected):
            assert got.audio.dtype == np.float32 and got.audio.shape == want.shape, req_id
            err = np.linalg.norm(got.audio - want) / max(np.linalg.norm(want), 1e-9)
            assert err < REL_TOL, (req_id, err)
        total = sum(o.audio.shape[0] for o in outs)
        if stream:
            assert total == len(tokens) * cfg.samples_per_token
    assert engine.num_active() == 0 and not engine.has_work()


def test_lockstep_batch_is_kept(setup, monkeypatch):
    """Streams that run together step after step reuse their batched flow state (no stacking, no split) and
    still get the reference audio; when they part, the batch is split back into per-request states."""
    cfg, engine, reqs = setup
    engine.hop_policy = HopPolicy("fixed")
    stacked = []

    def spy_stack(states, ratio):
        stacked.append(len(states))
        return stack_flow_states(states, ratio)

    monkeypatch.setattr(engine_module, "stack_flow_states", spy_stack)
    chosen = [reqs[0], reqs[4]]  # equal prompt lengths: equal chunk shapes until the shorter one ends
    for req_id, prompt, tokens, seed, stream, speed, push in chosen:
        engine.add_request(req_id, prompt, seed, stream, speed)
        engine.push_tokens(req_id, tokens, is_last=True)
    outputs, batch_sizes = run_until_done(engine, {})
    assert batch_sizes[:4] == [2, 2, 2, 2], batch_sizes
    assert stacked.count(2) == 1, stacked  # stacked once, for the first chunks; kept for the next three
    assert not engine.flow_batches
    for req_id, prompt, tokens, seed, stream, speed, push in chosen:
        expected = reference(engine, prompt, tokens, seed, stream, speed)
        for got, want in zip(outputs[req_id], expected, strict=True):
            assert np.linalg.norm(got.audio - want) / np.linalg.norm(want) < REL_TOL, req_id


def eager_record(self, run):
    """Stands in for CUDA-graph capture on the CPU: 'capture' runs the call, 'replay' reruns it into the same
    output tensors, so bucketing, static buffers, padding and copy-out run exactly as around a graph."""
    outputs = run()

    def replay():
        for old, new in zip(flat(outputs), flat(run())):
            old.copy_(new)

    return replay, outputs


def flat(outputs) -> list[torch.Tensor]:
    tensors = []
    for out in outputs:
        tensors.extend([out.conv_tails, out.kv] if isinstance(out, EstimatorCache) else [out])
    return tensors


class EagerReplayGraphs(EstimatorGraphs):
    _record = eager_record


class EagerReplayHiFTGraphs(HiFTGraphs):
    _record = eager_record


def test_graph_runner_equals_eager(setup):
    cfg, engine, reqs = setup
    engine.hop_policy = HopPolicy("fixed")
    runner = EagerReplayGraphs(engine.flow.decoder.estimator)
    engine.flow.decoder.runner = runner
    hift_runner = engine.hift.runner = EagerReplayHiFTGraphs(engine.hift)
    try:
        feeds = {}
        for i, (req_id, prompt, tokens, seed, stream, speed, push) in enumerate(reqs[:5]):
            engine.add_request(req_id, prompt, seed, stream, speed)
            feeds[req_id] = (tokens, push, i % 3)
        outputs, _ = run_until_done(engine, feeds)
    finally:
        engine.flow.decoder.runner = engine.hift.runner = None
    assert runner.num_replays > runner.num_eager > 0 and len(runner.calls) > 3  # final chunks run eagerly
    assert hift_runner.num_replays > 0 and hift_runner.num_eager > 0, (hift_runner.num_replays, hift_runner.num_eager)
    for req_id, prompt, tokens, seed, stream, speed, push in reqs[:5]:
        expected = reference(engine, prompt, tokens, seed, stream, speed)
        for got, want in zip(outputs[req_id], expected, strict=True):
            assert np.linalg.norm(got.audio - want) / np.linalg.norm(want) < REL_TOL, req_id


def test_abort_frees_state(setup):
    cfg, engine, reqs = setup
    req_id, prompt, tokens, seed, *_ = reqs[0]
    engine.add_request("a", prompt, seed, stream=True)
    engine.push_tokens("a", tokens[:60], is_last=False)
    outs = engine.step()
    assert [o.req_id for o in outs] == ["a"] and not outs[0].finished
    engine.abort("a")
    engine.push_tokens("a", tokens[60:], is_last=True)  # late tokens of an aborted request are dropped
    assert engine.num_active() == 0 and not engine.has_work() and engine.step() == []


def test_bad_request_fails_alone(setup):
    cfg, engine, reqs = setup
    good = reqs[:3]
    for req_id, prompt, tokens, seed, *_ in good:
        engine.add_request(req_id, prompt, seed, stream=True)
        engine.push_tokens(req_id, tokens, is_last=True)
    bad_prompt = good[0][1]
    engine.add_request("bad", bad_prompt, 0, stream=True)
    engine.push_tokens("bad", [cfg.flow.vocab_size + 5] * 60, is_last=True)  # token id out of the vocabulary
    outputs: dict[str, list[AudioOutput]] = {}
    while engine.num_active():
        for out in engine.step():
            outputs.setdefault(out.req_id, []).append(out)
    assert outputs["bad"][-1].error and outputs["bad"][-1].finished
    for req_id, prompt, tokens, seed, *_ in good:
        audio = np.concatenate([o.audio for o in outputs[req_id]])
        want = np.concatenate(reference(engine, prompt, tokens, seed, True, 1.0))
        assert all(o.error is None for o in outputs[req_id])
        assert np.linalg.norm(audio - want) / np.linalg.norm(want) < REL_TOL


def test_request_without_tokens_finishes_empty(setup):
    cfg, engine, reqs = setup
    for stream in (True, False):
        engine.add_request("empty", reqs[0][1], 0, stream=stream)
        engine.push_tokens("empty", [], is_last=True)
        (out,) = engine.step()
        assert out.req_id == "empty" and out.finished and out.error is None and out.audio.shape == (0,)
        assert engine.num_active() == 0


def test_to_int16_clips():
    pcm = to_int16(np.array([0.0, 0.5, 1.0, 1.5, -1.5], np.float32))
    assert pcm.tolist() == [0, 16383, 32767, 32767, -32767]


def test_stream_admission_cap_queues_instead_of_failing(setup):
    """With room for 2 streams, 4 streams still all finish with their own audio; at most 2 ever hold a cache."""
    cfg, engine, reqs = setup
    engine.hop_policy = HopPolicy("fixed")
    engine.max_active_streams = 2
    streams = [r for r in reqs if r[4]][:4]
    assert len(streams) >= 3
    try:
        feeds = {}
        for req_id, prompt, tokens, seed, stream, speed, push in streams:
            engine.add_request(req_id, prompt, seed, stream, speed)
            feeds[req_id] = (tokens, len(tokens), 0)  # every token at once: all could start in the first step
        outputs: dict[str, list[AudioOutput]] = {}
        max_started = 0
        while engine.num_active():
            for req_id, (tokens, _, _) in list(feeds.items()):
                engine.push_tokens(req_id, tokens, is_last=True)
                del feeds[req_id]
            for out in engine.step():
                outputs.setdefault(out.req_id, []).append(out)
            started = sum(1 for r in engine.requests.values() if r.schedule.offset > 0)
            max_started = max(max_started, started)
        assert max_started <= 2
        for req_id, prompt, tokens, seed, stream, speed, push in streams:
            got = np.concatenate([o.audio for o in outputs[req_id]])
            want = np.concatenate(reference(engine, prompt, tokens, seed, stream, speed))
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < REL_TOL, req_id
    finally:
        engine.max_active_streams = None


def test_stream_capacity_from_memory(fixture_dir):
    from light_tts.decode.engine import stream_cache_bytes, stream_capacity
    from light_tts.model_config import ModelConfig

    full = ModelConfig(model_dir=fixture_dir)  # released dimensions
    # 10 CFM steps x 56 transformer blocks x K/V x CFG pair x 512 x fp16 = 2.3 MB per mel frame
    assert stream_cache_bytes(full, torch.float16, 1.0) == 10 * 56 * 2 * 2 * 512 * 2 * 50
    assert stream_capacity(full, torch.float16, 100 << 30) == (100 << 30) // (4 * 30 * 114688000)
    assert stream_capacity(full, torch.float16, 0) == 1
