"""The pressure benchmark's pure parts (no server): a mix replays from its seed and covers the cases issue 20 names;
the verdict counts as lost everything but full audio, a client that left on purpose, a 413 and a 429, and tells a
413 the pool did not deserve."""

from light_tts.bench.serving.pressure_mix import (
    BYTES_PER_TOKEN,
    Job,
    Outcome,
    expected,
    judge,
    latencies,
    make_mix,
    signature,
)


def test_a_mix_replays_from_its_seed_and_covers_the_cases():
    assert make_mix(25, 10, 24, 2) == make_mix(25, 10, 24, 2) != make_mix(26, 10, 24, 2)
    jobs = make_mix(3, 400, 24, 2)
    assert {expected(j, 24) for j in jobs} == {"ok", "too_large", "client_left"}
    assert {j.is_stream for j in jobs} == {True, False} and {j.voice >= 0 for j in jobs} == {True, False}
    fitting = [j.tokens for j in jobs if expected(j, 24) != "too_large"]
    assert min(fitting) == 25 and 18 * 25 < max(fitting) <= (24 - 2 - 2) * 25  # one second up to the pool's size
    assert all(expected(j, 24 + 2) == "too_large" for j in jobs if expected(j, 24) == "too_large")  # clear of it
    at = [j.at_s for j in jobs]
    assert at == sorted(at) and len(set(at)) < len(at) / 2  # bursts: several requests at one instant
    assert all(0 < j.leave_after_bytes < j.tokens * BYTES_PER_TOKEN for j in jobs if j.leave_after_bytes)
    assert {j.voice for j in make_mix(3, 50, 24, 0)} == {-1}  # no saved voice to name


def test_the_verdict():
    jobs = [
        Job(0, True, 0, 100, 0.0),
        Job(1, False, -1, 50, 0.0),
        Job(2, True, 1, 2000, 0.0),
        Job(3, True, -1, 100, 0.0, leave_after_bytes=1000),
        Job(4, True, 0, 100, 0.0),
        Job(5, True, 0, 100, 0.0),
        Job(6, False, 0, 100, 0.0),
        Job(7, True, 0, 100, 0.0),
        Job(8, False, 0, 100, 0.0),
    ]
    outcomes = [
        Outcome(0, 200, "ok", 100 * BYTES_PER_TOKEN, 0.5, 3.0),
        Outcome(1, 200, "ok", 50 * BYTES_PER_TOKEN, end_s=2.0),
        Outcome(2, 413, "too_large", end_s=0.1),
        Outcome(3, 200, "client_left", 1000, 0.7, 1.0),
        Outcome(4, 429, "overloaded", end_s=5.0),
        Outcome(5, 200, "cut", 4000, 0.9, 300.0),  # cut after its 200
        Outcome(6, 413, "too_large"),  # a 413 the pool did not deserve
        Outcome(7, 504, "timeout"),
        Outcome(8, 200, "short", 1000),
    ]
    verdict = judge(jobs, outcomes, pool_pages=24)
    assert verdict["lost"] == [5, 7, 8] and verdict["cut_after_200"] == [5] and verdict["mismatched"] == [6]
    assert verdict["by_outcome"] == {
        "ok": 2,
        "too_large": 2,
        "client_left": 1,
        "overloaded": 1,
        "cut": 1,
        "timeout": 1,
        "short": 1,
    }
    assert signature(outcomes)[3] == (3, "client_left", 0)  # where a client chose to leave does not count
    lat = latencies(jobs, outcomes)
    assert lat["first_audio_p50_s"] == 0.5 and lat["max_end_s"] == 300.0  # only full streams' first audio
