"""The decode step scheduler (pure CPU) with simulated clocks and step times: first chunks go first, a burst of
new streams does not stall running ones, non-stream work yields to streams, and a simulated engine at load below
its capacity never lets an admitted stream run dry."""

import math

from light_tts.decode.scheduler import Candidate, SchedulerConfig, StepTimeModel, schedule

CFG = SchedulerConfig(max_rows=8, max_tokens=400, fill_horizon_s=0.5, target_step_s=0.05)


def stream(key, deadline, tokens=28, first=False, arrival=0.0):
    return Candidate(key, True, first, -math.inf if first else deadline, tokens, arrival)


def keys(chosen):
    return [c.key for c in chosen]


def test_first_chunks_go_first_and_far_ahead_streams_wait():
    model = StepTimeModel(base_s=0.02, per_token_s=1e-3)  # 28-token chunk: ~50 ms
    cands = [stream("ahead", deadline=5.0), stream("new", 0, first=True, arrival=1.0)]
    assert keys(schedule(cands, now=0.0, cfg=CFG, model=model)) == ["new"]
    # streams close to their deadlines run too: one that would run dry before the next step even ahead of the
    # first chunk, the other after it
    cands += [stream("soon", deadline=0.3), stream("sooner", deadline=0.2)]
    assert keys(schedule(cands, now=0.0, cfg=CFG, model=model)) == ["sooner", "new", "soon"]


def test_burst_of_new_streams_does_not_stall_running_ones():
    model = StepTimeModel(base_s=0.02, per_token_s=1e-3)
    running = [stream(f"run{i}", deadline=0.1 + 0.01 * i) for i in range(3)]  # they run dry within two steps
    burst = [stream(f"new{i}", 0, first=True, arrival=i) for i in range(10)]
    chosen = keys(schedule(burst + running, now=0.0, cfg=CFG, model=model))
    assert chosen[:3] == ["run0", "run1", "run2"]  # urgent ones before any first chunk
    assert chosen[3:] == [f"new{i}" for i in range(5)]  # then first chunks, fifo, up to the row budget


def test_non_stream_work_yields_to_streams():
    model = StepTimeModel(base_s=0.02, per_token_s=1e-3)
    long_utterance = Candidate("offline", False, False, math.inf, 300, arrival=0.0)  # ~320 ms of work
    tight = stream("tight", deadline=0.3)
    chosen = keys(schedule([long_utterance, tight], now=0.0, cfg=CFG, model=model))
    assert chosen == ["tight"]  # 0.32 s more would make its step end past its slack
    relaxed = stream("relaxed", deadline=3.0)  # far ahead: it only joins the step the utterance makes long anyway
    assert keys(schedule([long_utterance, relaxed], now=0.0, cfg=CFG, model=model)) == ["offline", "relaxed"]
    assert keys(schedule([long_utterance], now=0.0, cfg=CFG, model=model)) == ["offline"]


def test_an_oversized_row_runs_alone_and_a_held_utterance_gets_its_turn():
    """A non-stream utterance longer than a step's token budget, or a long stream's recompute, runs in a step of its
    own (it would otherwise never be scheduled); a non-stream utterance held back for streams' slack past
    max_hold_s runs anyway."""
    model = StepTimeModel(base_s=0.02, per_token_s=1e-4)
    huge = Candidate("huge", False, False, math.inf, 1300, arrival=0.0)  # > CFG.max_tokens (400)
    assert keys(schedule([huge], now=0.0, cfg=CFG, model=model)) == ["huge"]
    tight = stream("tight", deadline=0.1)
    assert keys(schedule([huge, tight], now=0.0, cfg=CFG, model=model)) == ["tight"]  # it cannot join
    huge.waited_s = CFG.max_hold_s
    assert keys(schedule([huge, tight], now=0.0, cfg=CFG, model=model)) == ["huge"]  # its turn: alone
    recompute = stream("back", deadline=0.05, tokens=900)  # a preempted stream's whole context
    assert keys(schedule([recompute, stream("other", 0.5)], now=0.0, cfg=CFG, model=model)) == ["back"]
    slow = Candidate("slow", False, False, math.inf, 300, arrival=0.0)  # ~0.3 s: more than the tight slack
    assert keys(schedule([slow, tight], now=0.0, cfg=CFG, model=StepTimeModel(0.02, 1e-3))) == ["tight"]
    slow.waited_s = CFG.max_hold_s
    assert sorted(keys(schedule([slow, tight], now=0.0, cfg=CFG, model=StepTimeModel(0.02, 1e-3)))) == ["slow", "tight"]


def test_step_time_model_learns_a_line():
    model = StepTimeModel(base_s=1.0, per_token_s=1.0)
    for tokens in [25, 50, 100, 200, 400] * 4:
        model.observe(tokens, 0.01 + 2e-4 * tokens)
    assert abs(model.predict(300) - (0.01 + 2e-4 * 300)) < 1e-6


def simulate(num_streams, arrivals_every_s, step_base_s, step_per_token_s, duration_s=20.0, chunk_s=1.0):
    """An engine whose streams always have their next chunk's tokens (the LLM is far faster), each chunk giving
    `chunk_s` of audio. Returns (stall seconds per stream, first-audio latencies)."""
    model = StepTimeModel(step_base_s, step_per_token_s)
    now, started, heard = 0.0, {}, {}
    stalls, ttfa = {}, []
    arrivals = [i * arrivals_every_s for i in range(num_streams)]
    chunks_left = {i: int(duration_s / chunk_s) for i in range(num_streams)}
    while any(chunks_left.values()):
        cands = []
        for i, t in enumerate(arrivals):
            if t <= now and chunks_left[i]:
                first = i not in started
                deadline = -math.inf if first else started[i] + heard[i] - 0.2
                cands.append(Candidate(str(i), True, first, deadline, 28, t))
        if not cands:
            now = min(t for i, t in enumerate(arrivals) if chunks_left[i] and t > now)
            continue
        chosen = schedule(cands, now, SchedulerConfig(64, 4000), model)
        now += model.predict(sum(c.num_tokens for c in chosen))
        for c in chosen:
            i = int(c.key)
            if i not in started:
                started[i], heard[i] = now, 0.0
                ttfa.append(now - arrivals[i])
            elif now > started[i] + heard[i]:
                stalls[i] = stalls.get(i, 0.0) + now - (started[i] + heard[i])
                started[i] += now - (started[i] + heard[i])  # playback resumes when audio arrives
            heard[i] += chunk_s
            chunks_left[i] -= 1
    return stalls, ttfa


def test_simulated_engine_below_capacity_never_stalls():
    # 40 streams arriving 50 ms apart on an engine doing a 64-stream step in ~0.2 s: well below capacity
    stalls, ttfa = simulate(num_streams=40, arrivals_every_s=0.05, step_base_s=0.02, step_per_token_s=1e-4)
    assert not stalls
    assert max(ttfa) < 0.2  # a new stream waits at most for the step in flight and its own


def test_simulated_engine_over_capacity_stalls():
    """The same simulation does detect stalls: 200 streams need more than the engine has."""
    stalls, _ = simulate(num_streams=200, arrivals_every_s=0.0, step_base_s=0.02, step_per_token_s=1e-3, duration_s=5.0)
    assert stalls


def test_latency_lane_keeps_steps_short_near_a_first_chunk():
    model = StepTimeModel(base_s=0.02, per_token_s=1e-3)
    lane = SchedulerConfig(max_rows=8, max_tokens=400, fill_horizon_s=0.5, target_step_s=0.2, lane_step_s=0.0)
    ahead = [stream(f"ahead{i}", deadline=5.0 + i) for i in range(4)]  # far ahead of their listeners
    # no first chunk near: early chunks fill the step (and with the lane off, always)
    assert len(schedule(ahead, 0.0, lane, model)) == 4
    assert len(schedule(ahead, 0.0, CFG, model, first_expected=True)) > 0
    # a first chunk on its way: the lane waits for it instead of starting a step of early chunks
    assert schedule(ahead, 0.0, lane, model, first_expected=True) == []
    # the first chunk's own step takes no early chunk either; due ones still run
    due = stream("due", deadline=0.3)
    chosen = keys(schedule([*ahead, due, stream("new", 0, first=True)], 0.0, lane, model))
    assert chosen == ["new", "due"]
