"""The paged decode engine against the unbatched reference (Token2WavSession / Token2Wav.offline) on the tiny
fixture model, CPU, float32: same audio per request to float rounding, whatever the step it ran in; shared voice
prefixes, admission by pages, failures isolated to their step, fp8 pages within their bound, graph buckets."""

import itertools

import numpy as np
import pytest
import torch

import light_tts.decode.flow.flow_runner as flow_runner
from light_tts.decode.engine import AudioOutput, DecodeEngine, to_int16
from light_tts.decode.engine_setup import EngineLimits
from light_tts.frontend.prompt import Prompt
from light_tts.model_dir import load_model_config
from light_tts.token2wav import HopPolicy

# (prompt tokens, utterance tokens, seed, stream, speed, tokens per push); lengths chosen so that streams end on
# and off chunk boundaries, before their first hop, and with prompts on and off the page boundary
REQUESTS = [
    (30, 140, 1, True, 1.0, 25),
    (40, 135, 2, True, 1.0, 1000),
    (55, 96, 3, True, 1.0, 30),
    (12, 20, 4, True, 1.0, 5),  # ends before its first hop: one final chunk
    (30, 160, 5, True, 1.0, 20),
    (66, 64, 6, False, 1.0, 9),
    (25, 64, 7, False, 1.0, 64),
    (48, 51, 8, False, 1.3, 17),
]
REL_TOL = 1e-5
LIMITS = EngineLimits(max_stream_tokens=400, max_prompt_tokens=200, max_pass_tokens=2048, num_pages=96)


def make_prompt(num_tokens: int, vocab: int, seed: int) -> Prompt:
    g = np.random.default_rng(seed)
    return Prompt(
        text_tokens=np.zeros(3, np.int32),
        speech_tokens=g.integers(0, vocab, num_tokens).astype(np.int32),
        embedding=g.standard_normal(192).astype(np.float32),
        mel=(g.standard_normal((2 * num_tokens, 80)) - 5).astype(np.float32),
    )


@pytest.fixture(scope="module")
def cfg(fixture_dir):
    return load_model_config(fixture_dir)


def new_engine(cfg, hop="growing", **limits) -> DecodeEngine:
    """An engine on a clock that never moves: what these tests check must not depend on how fast a busy host
    steps (a request queued behind others would pass --admission_wait_s on wall time and get a 429)."""
    return DecodeEngine(
        cfg,
        max_batch_size=16,
        hop_policy=HopPolicy(hop),
        limits=EngineLimits(**{**LIMITS.__dict__, **limits}),
        clock=lambda: 0.0,
    )


def make_requests(cfg):
    vocab = cfg.flow.vocab_size
    reqs = []
    for i, (p, n, seed, stream, speed, push) in enumerate(REQUESTS):
        tokens = np.random.default_rng(100 + i).integers(0, vocab, n).tolist()
        reqs.append((f"r{i}", make_prompt(p, vocab, 10 + i), tokens, seed, stream, speed, push))
    return reqs


def reference(engine: DecodeEngine, prompt, tokens, seed, stream, speed) -> list[np.ndarray]:
    if not stream:
        return [engine.t2w.offline(tokens, prompt, seed, speed)]
    session = engine.t2w.session(prompt, seed, engine.hop_policy)
    return session.feed(tokens) + [session.finish()]


def run_until_done(engine: DecodeEngine, feeds: dict) -> dict[str, list[AudioOutput]]:
    """Pushes each request's tokens a slice per step (staggered arrivals) and steps until nothing is left."""
    outputs: dict[str, list[AudioOutput]] = {}
    step = 0
    while engine.num_active():
        for req_id, (tokens, push, delay) in feeds.items():
            start = (step - delay) * push
            if 0 <= start < len(tokens) or (start == len(tokens) and not tokens):
                engine.push_tokens(req_id, tokens[start : start + push], is_last=start + push >= len(tokens))
        for out in engine.step():
            outputs.setdefault(out.req_id, []).append(out)
        step += 1
        assert step < 500
    return outputs


def check_against_reference(engine, reqs, outputs) -> float:
    worst = 0.0
    for req_id, prompt, tokens, seed, stream, speed, _ in reqs:
        got = outputs[req_id]
        assert all(o.error is None for o in got), [o.error for o in got]
        assert got[-1].finished and not any(o.finished for o in got[:-1])
        ref = reference(engine, prompt, tokens, seed, stream, speed)
        got_audio = [o.audio for o in got if len(o.audio)]
        assert [len(a) for a in got_audio] == [len(a) for a in ref if len(a)], req_id
        for a, b in zip(got_audio, [r for r in ref if len(r)]):
            worst = max(worst, float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)))
    return worst


def eager_record(run, pool):
    """kernels/cuda_graphs.record_graph's CPU stand-in: the outputs of one run, rewritten in place by each replay from
    whatever the static inputs hold (what a CUDA graph's replay does)."""
    outputs = run()

    def replay():
        for out, new in zip(outputs, run()):
            out.copy_(new)

    return replay, outputs, pool


def run_packed(engine, cfg) -> float:
    """Every request of REQUESTS with staggered arrivals; the worst chunk's error to the reference. Nothing is
    left held afterwards."""
    reqs = make_requests(cfg)
    feeds = {}
    for i, (req_id, prompt, tokens, seed, stream, speed, push) in enumerate(reqs):
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, i % 3)  # staggered arrivals
    worst = check_against_reference(engine, reqs, run_until_done(engine, feeds))
    engine.pool.check()
    assert engine.pool.num_outstanding == 0 and engine.slots.num_free == engine.slots.num_slots - 2
    return worst


@pytest.mark.parametrize("hop", ["growing", "fixed"])
def test_packed_steps_equal_unbatched(cfg, hop):
    worst = run_packed(new_engine(cfg, hop), cfg)
    print(f"{hop}: worst chunk rel L2 {worst:.2e}")
    assert worst < REL_TOL


def test_shared_prefix_equals_unshared_and_costs_no_pages(cfg):
    """Streams of one voice share its prompt's first pages (after the first user), with the audio they would get
    alone; the second stream's first chunk computes only the prompt's last chunk and its own tokens."""
    engine = new_engine(cfg, "fixed")
    worst, first, used_before = run_shared_prefix(engine, cfg)
    assert [s.num_new for s in first] == [3 + 22 + 25] * 2
    assert worst < REL_TOL
    assert engine.pool.num_used == used_before  # the shared pages were the only ones left held


def run_shared_prefix(engine, cfg) -> tuple[float, list, int]:
    """One stream of a voice, then two more of it: (the worst chunk's error, the later ones' first specs, pages
    used before them). Their first chunks start after the voice's 3 shared pages."""
    vocab = cfg.flow.vocab_size
    prompt = make_prompt(78, vocab, 5)  # 3 pages shareable: (78 - 3 lookahead) // 25
    reqs = [
        (f"v{i}", prompt, np.random.default_rng(i).integers(0, vocab, 90).tolist(), 40 + i, True, 1.0, 30)
        for i in range(3)
    ]
    engine.add_request("v0", prompt, 40, True, prefix_key="voice")
    out = run_until_done(engine, {"v0": (reqs[0][2], 30, 0)})
    entry = engine.pool.prefixes["voice"]
    assert len(entry.pages) == 3 and entry.num_users == 0  # kept warm, unused
    used_before = engine.pool.num_used
    specs = []
    original = engine.runner.run
    engine.runner.run = lambda s: (specs.append(list(s)), original(s))[1]
    for req_id, p, _tokens, seed, *_ in reqs[1:]:
        engine.add_request(req_id, p, seed, True, prefix_key="voice")
    out.update(run_until_done(engine, {r[0]: (r[2], 30, 0) for r in reqs[1:]}))
    assert [s.t0 for s in specs[0]] == [75, 75]
    engine.pool.check()
    return check_against_reference(engine, reqs, out), specs[0], used_before


def test_full_reservation_queues_by_pages_and_refuses_what_never_fits(cfg):
    engine = new_engine(cfg, "fixed", num_pages=24, max_stream_tokens=200, reservation="full")  # 10-11 pages each
    reqs = make_requests(cfg)[:3]
    feeds = {}
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, 0)
    for req_id, _, tokens, *_ in reqs:  # every first chunk is ready: 10 + 10 + 11 pages asked, 24 there
        engine.push_tokens(req_id, tokens[:60], False)
    engine.step()
    assert engine.stats.waiting_for_pages == 1 and engine.stats.streams_active == 2
    assert engine.pool.num_outstanding + engine.pool.num_used <= 24
    for req_id, prompt, _tokens, seed, stream, speed, _push in reqs:
        engine.abort(req_id)
        engine.add_request(req_id, prompt, seed, stream, speed)
    assert check_against_reference(engine, reqs, run_until_done(engine, feeds)) < REL_TOL
    big = new_engine(cfg, "fixed", num_pages=4, reservation="full")
    big.add_request("huge", reqs[0][1], 0, True)
    big.push_tokens("huge", reqs[0][2][:60], False)
    (out,) = big.step()
    assert out.finished and "needs 18 flow-cache pages, the pool has 4" in out.error
    big.pool.check()


def test_failed_step_fails_only_its_requests(cfg):
    engine = new_engine(cfg, "fixed")
    reqs = make_requests(cfg)
    (a_id, a_prompt, a_tokens, a_seed, *_), (b_id, b_prompt, b_tokens, b_seed, *_) = reqs[0], reqs[1]
    engine.add_request(a_id, a_prompt, a_seed, True)
    engine.add_request(b_id, b_prompt, b_seed, True)
    engine.push_tokens(a_id, a_tokens[:48], False)  # a's first chunk only (25 + pad 20 + lookahead 3)
    outputs = {a_id: list(engine.step())}
    original = engine.runner.run

    def failing(specs):
        raise torch.cuda.OutOfMemoryError("injected")

    engine.runner.run = failing
    engine.push_tokens(b_id, b_tokens[:60], False)  # b's first chunk runs alone in the failing step
    for step_out in (engine.step(),):
        assert [o.req_id for o in step_out if o.error] == [b_id]
    engine.runner.run = original
    engine.pool.check()
    assert b_id not in engine.pool.streams and b_id not in engine.requests
    engine.push_tokens(a_id, a_tokens[48:], True)
    while engine.num_active():
        outputs[a_id] += engine.step()
    assert check_against_reference(engine, reqs[:1], outputs) < REL_TOL


def test_abort_bad_and_empty_requests(cfg):
    engine = new_engine(cfg)
    reqs = make_requests(cfg)
    req_id, prompt, tokens, seed, *_ = reqs[0]
    engine.add_request(req_id, prompt, seed, True)
    engine.push_tokens(req_id, tokens[:80], False)
    engine.step()
    engine.abort(req_id)
    assert not engine.requests and engine.pool.num_used == 0
    # what /metrics shows: no step follows an abort when nothing else runs (it used to show the pages still used)
    assert engine.stats.pages_used == 0 and engine.stats.streams_active == 0
    bad = Prompt(prompt.text_tokens, prompt.speech_tokens, prompt.embedding, prompt.mel[:-3])
    engine.add_request("bad", bad, 0, True)
    engine.add_request("good", prompt, seed, True)
    engine.add_request("empty", prompt, seed, True)
    engine.push_tokens("good", tokens, True)
    engine.push_tokens("empty", [], True)
    outputs = {}
    while engine.num_active():
        for o in engine.step():
            outputs.setdefault(o.req_id, []).append(o)
    assert outputs["bad"][0].error and outputs["empty"][0].audio.size == 0 and outputs["empty"][0].finished
    assert check_against_reference(engine, [("good",) + reqs[0][1:]], outputs) < REL_TOL
    engine.pool.check()


def test_fp8_pages_stay_within_their_bound(cfg):
    """fp8 keys/values with per-page, per-head scales: the audio stays close to float32's (bound documented in
    docs/decode-engine.md; measured on the full-size random model in docs/performance.md)."""
    engine = new_engine(cfg, "fixed", kv_dtype="fp8_e4m3")
    reqs = make_requests(cfg)[:2]
    feeds = {}
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, 0)
    worst = check_against_reference(engine, reqs, run_until_done(engine, feeds))
    print(f"fp8 pages: worst chunk rel L2 {worst:.2e}")
    assert 1e-5 < worst < 0.1


def test_graph_buckets_equal_eager(cfg, monkeypatch):
    """The graph path on the CPU: capture becomes "remember the call", replay reruns it into the captured output,
    so padding to buckets, static inputs and the output buffer work as around a real graph."""

    def record(run, pool=None):
        out = run()
        return (lambda: out.copy_(run())), out, pool

    monkeypatch.setattr(flow_runner, "record_graph", record)
    engine = new_engine(cfg, "fixed", max_pass_tokens=512)
    engine.runner.use_graphs = True
    engine.runner.capture_all()
    reqs = make_requests(cfg)
    feeds = {}
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, 0)
    assert check_against_reference(engine, reqs, run_until_done(engine, feeds)) < REL_TOL
    assert engine.runner.num_replays > 0
    engine.pool.check()


def test_to_int16_clips():
    assert to_int16(np.array([2.0, -2.0, 0.5], np.float32)).tolist() == [32767, -32767, 16383]


def mels_of(engine: DecodeEngine, req_id: str, prompt, tokens, seed, push=30) -> tuple[np.ndarray, int]:
    """The concatenated mel frames the engine hands to HiFT for one stream, and its audio samples."""
    mels, samples = [], 0
    stage = engine.hift_stage
    original = stage.vocode

    def record(jobs, outputs):
        mels.extend(job.mel[0].t().numpy() for job in jobs if job.req.req_id == req_id)
        return original(jobs, outputs)

    stage.vocode = record
    engine.add_request(req_id, prompt, seed, True)
    for out in run_until_done(engine, {req_id: (tokens, push, 0)})[req_id]:
        samples += len(out.audio)
    del stage.vocode
    return np.concatenate(mels), samples


def test_short_first_hop_is_provisional_then_exact(cfg):
    """--first_hop_tokens 15: the first chunk is the prompt and 15 tokens (ending off the chunk grid); from the
    second chunk on, every mel frame equals upstream's schedule's, and the audio adds up to 960 per token."""
    vocab = cfg.flow.vocab_size
    prompt, tokens = make_prompt(30, vocab, 3), np.random.default_rng(9).integers(0, vocab, 110).tolist()
    standard, n_std = mels_of(new_engine(cfg, "fixed"), "s", prompt, tokens, 5)
    short, n_short = mels_of(new_engine(cfg, "fixed", first_hop_tokens=15), "s", prompt, tokens, 5)
    assert n_std == n_short == 960 * len(tokens) and short.shape == standard.shape
    head = 2 * 15
    tail_err = np.linalg.norm(short[head:] - standard[head:]) / np.linalg.norm(standard[head:])
    head_err = np.linalg.norm(short[:head] - standard[:head]) / np.linalg.norm(standard[:head])
    print(f"first hop 15: provisional frames rel L2 {head_err:.2e}, later frames {tail_err:.2e}")
    assert tail_err < REL_TOL and head_err > 1e-4


def test_context_window_bounds_pages_and_is_exact_when_wide(cfg):
    vocab = cfg.flow.vocab_size
    prompt, tokens = make_prompt(30, vocab, 4), np.random.default_rng(8).integers(0, vocab, 300).tolist()
    full, _ = mels_of(new_engine(cfg, "fixed"), "s", prompt, tokens, 5)
    wide, _ = mels_of(new_engine(cfg, "fixed", context_window_pages=100), "s", prompt, tokens, 5)
    assert np.linalg.norm(wide - full) / np.linalg.norm(full) < REL_TOL  # a window wider than the stream
    engine = new_engine(cfg, "fixed", context_window_pages=2)
    held = []
    original = engine._after_flow
    engine._after_flow = lambda job: (original(job), held.append(engine.pool.streams[job.req.req_id].num_held))
    narrow, _ = mels_of(engine, "s", prompt, tokens, 5)
    prompt_pages = 2
    assert max(held) <= prompt_pages + 2 + 1  # the prompt, the window and the chunk: flat along the stream
    err = np.linalg.norm(narrow - full) / np.linalg.norm(full)
    print(f"context window 2 s on a 12 s stream: mel rel L2 {err:.2e} against full attention")
    assert err > 1e-4  # not upstream-exact: docs/decode-engine.md
    engine.pool.check()


def test_realtime_admission_waits_then_refuses_with_429(cfg):
    """With real-time admission on, a stream past the capacity of the measured step times waits; past
    admission_wait_s it fails as `overloaded` (the HTTP worker answers 429 with Retry-After)."""
    now = [0.0]
    engine = DecodeEngine(
        cfg,
        max_batch_size=16,
        hop_policy=HopPolicy("fixed"),
        clock=lambda: now[0],
        limits=EngineLimits(**{**LIMITS.__dict__, "realtime_admission": True, "admission_wait_s": 2.0}),
    )
    engine.step_model.base_s, engine.step_model.per_token_s = 0.1, 0.5 / 28  # one stream fills a second
    engine.step_model.observe = lambda *a: None
    assert engine.capacity_streams() == 1
    reqs = make_requests(cfg)
    for req_id, prompt, tokens, seed, *_ in reqs[:2]:
        engine.add_request(req_id, prompt, seed, True)
        engine.push_tokens(req_id, tokens[:60], False)
    engine.step()
    assert engine.stats.waiting_for_pages == 1 and engine.stats.streams_active == 1
    now[0] = 1.5
    assert not [o for o in engine.step() if o.error]  # still within the bound
    now[0] = 3.0
    (refused,) = [o for o in engine.step() if o.error]
    assert refused.req_id == "r1" and refused.error_kind == "overloaded" and "retry" in refused.error
    engine.pool.check()


def test_release_and_reload_keep_the_audio(cfg):
    """--idle_release_s: an idle engine drops its pool and graphs and moves its weights to host memory; after a
    reload it serves the same audio as before."""
    engine = new_engine(cfg, "fixed")
    reqs = make_requests(cfg)[:1]
    engine.release()
    assert engine.is_released and engine.flow.input_embedding.weight.device.type == "cpu"
    engine.reload()
    assert not engine.is_released
    req_id, prompt, tokens, seed, stream, speed, push = reqs[0]
    engine.add_request(req_id, prompt, seed, stream, speed)
    assert check_against_reference(engine, reqs, run_until_done(engine, {req_id: (tokens, push, 0)})) < REL_TOL
    engine.add_request("busy", prompt, seed, True)
    with pytest.raises(RuntimeError):
        engine.release()


def ticking_clock(step_s: float = 0.01):
    """A simulated clock that moves a fixed amount at every reading: deterministic, whatever the host's speed."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_lazy_reservation_preempts_younger_streams_and_every_stream_gets_its_audio(cfg):
    """Lazy reservation on a pool too small for the streams' whole utterances: they are admitted on their first
    chunks; when pages run out an older stream takes them from the youngest, which recomputes its cache later;
    every stream still gets exactly the reference audio, the oldest is never preempted, and no stream is
    preempted twice within the interval."""
    engine = new_engine(cfg, "fixed", num_pages=16, max_stream_tokens=200)
    engine.clock = ticking_clock()
    reqs = [r for r in make_requests(cfg) if r[4]][:3]  # three streams: 6-8 pages each at the end
    preempted = []
    original = engine._preempt
    engine._preempt = lambda req, now: (preempted.append((req.req_id, now)), original(req, now))
    feeds = {}
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, 0)
    outputs = run_until_done(engine, feeds)
    assert preempted and reqs[0][0] not in [k for k, _ in preempted]
    for key in {k for k, _ in preempted}:
        times = [t for k, t in preempted if k == key]
        assert all(b - a >= LIMITS.preempt_interval_s for a, b in zip(times, times[1:]))
    assert check_against_reference(engine, reqs, outputs) < REL_TOL
    engine.pool.check()
    assert (
        engine.pool.num_used == engine.pool.num_evictable
        and engine.slots.num_free + len(engine.pool.prefixes) == engine.slots.num_slots - 2
    )


def test_a_step_whose_chosen_chunk_cannot_run_runs_the_oldest_stream_instead(cfg):
    """Issue 20's 8 x 48-s streams stalled for the 300 s limit: the scheduler filled each step with chunks that
    could not get pages (due first, but younger than every stream holding pages), and left out the older streams
    that could make room. A step of one row reaches that state with two streams (it stayed stuck for ever); now
    the oldest stream runs, and both get exactly the reference audio."""
    engine = DecodeEngine(
        cfg,
        max_batch_size=1,
        hop_policy=HopPolicy("fixed"),
        clock=ticking_clock(),
        limits=EngineLimits(**{**LIMITS.__dict__, "num_pages": 10, "max_stream_tokens": 200}),
    )
    reqs = [r for r in make_requests(cfg) if r[4]][:2]
    feeds = {}
    for req_id, prompt, tokens, seed, stream, speed, push in reqs:
        engine.add_request(req_id, prompt, seed, stream, speed)
        feeds[req_id] = (tokens, push, 0)
    assert check_against_reference(engine, reqs, run_until_done(engine, feeds)) < REL_TOL
    engine.pool.check()
    assert engine.pool.num_used == engine.pool.num_evictable


def test_an_utterance_past_the_pass_budget_runs_alone_and_one_past_the_pool_fails_at_once(cfg):
    """Issue 20's first reproduction, scaled down: a non-stream utterance longer than one step's token budget was
    never scheduled (it waited silently for the request's time limit); now it runs in a step of its own beside
    streams. One that can never fit the pool fails at once with 413, naming both sizes, before its tokens end."""
    engine = new_engine(cfg, "fixed", max_pass_tokens=128)
    reqs = make_requests(cfg)
    long_id, prompt, _, seed, *_ = reqs[6]
    tokens = np.random.default_rng(7).integers(0, cfg.flow.vocab_size, 150).tolist()  # 25 + 150 > 128
    engine.add_request(long_id, prompt, seed, False, max_tokens=150, min_tokens=150)
    stream_id, s_prompt, s_tokens, s_seed, *_ = reqs[0]
    engine.add_request(stream_id, s_prompt, s_seed, True)
    outputs = run_until_done(engine, {long_id: (tokens, 50, 0), stream_id: (s_tokens, 25, 0)})
    assert (
        check_against_reference(engine, [(long_id, prompt, tokens, seed, False, 1.0, 50), reqs[0]], outputs) < REL_TOL
    )
    small = new_engine(cfg, "fixed", num_pages=8)
    small.add_request("fixed", prompt, seed, False, max_tokens=300, min_tokens=300)  # a fixed length: known now
    (out,) = small.step()
    assert out.error_kind == "too_large" and "needs 13 flow-cache pages, the pool has 8" in out.error
    small.add_request("grows", prompt, seed, False, max_tokens=400)
    small.push_tokens("grows", tokens[:100], False)
    assert small.step() == []  # still within the pool: it waits for its last token
    small.push_tokens("grows", tokens[100:], False)  # 175 tokens: 7 pages... not yet past 8
    small.push_tokens("grows", tokens[:50], False)  # 225: 9 pages, known before the utterance ends
    (out,) = small.step()
    assert out.error_kind == "too_large" and "the pool has 8" in out.error
    small.pool.check()


def test_new_streams_wait_then_get_429_and_playing_streams_never_fail(cfg):
    """A pool held by playing streams: a new stream waits (reported once, with its reason), and past
    admission_wait_s fails as overloaded, before it has sent any audio; a playing stream that cannot grow only
    waits. The engine does not spin meanwhile: it asks to be stepped again after WAIT_POLL_S."""
    now = [0.0]
    engine = new_engine(cfg, "fixed", num_pages=10, max_stream_tokens=150, admission_wait_s=2.0, preempt_interval_s=1e9)
    engine.clock = lambda: now[0]
    reqs = [r for r in make_requests(cfg) if r[4]]
    for req_id, prompt, tokens, seed, *_ in reqs[:2]:
        engine.add_request(req_id, prompt, seed, True)
        engine.push_tokens(req_id, tokens[:60], False)  # 4 pages each: 2 of 10 left
    while len([r for r in engine.requests.values() if r.audio_start is not None]) < 2:
        engine.step()
    late_id, prompt, tokens, seed, *_ = reqs[2]
    engine.add_request(late_id, prompt, seed, True)
    engine.push_tokens(late_id, tokens[:60], False)
    for _ in range(10):
        assert not [o for o in engine.step() if o.error]
    waits = engine.take_waits()
    assert (late_id, "pages") in [(k, r) for k, r, _ in waits] and engine.take_waits() == []  # reported once
    assert not engine.has_work() and engine.wake_in_s() == pytest.approx(0.1)
    now[0] = 2.5
    assert engine.has_work()
    refused = [o for o in engine.step() if o.error]
    assert [(o.req_id, o.error_kind) for o in refused] == [(late_id, "overloaded")]
    assert "retry" in refused[0].error and engine.requests.keys() == {reqs[0][0], reqs[1][0]}
    engine.pool.check()


def test_ticking_clock_is_deterministic():
    a, b = ticking_clock(), ticking_clock()
    assert [a() for _ in range(3)] == [b() for _ in range(3)] == [0.0, 0.01, 0.02]
