"""Issue 20 under pressure: the real server on the tiny model with a flow-cache pool made small on purpose (16
pages: 16 stream-seconds with the prompts), driven by the pressure benchmark's client and judged by its verdict
(light_tts.bench.pressure, pressure_mix; the long run is the benchmark, its numbers in docs/performance.md).

The bound every request ends within is the server's --request_timeout_s (240 s here): a request that reaches it
ends with a timeout, which the verdict counts as lost, so none may. New streams may wait for pages up to
--admission_wait_s (120 s here, so that no 429 depends on how busy the host is) before a 429.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import httpx
import pytest
from server_harness import ServerProcess, serving

from light_tts.bench import pressure
from light_tts.bench.serving.pressure_mix import Job, expected, make_mix, pages_needed, signature
from light_tts.bench.serving.server_api import server_counters

POOL_PAGES = 16
TIME_LIMIT_S = 240
IDLE = {"slots": 0, "requests": 0, "decode_pages": 0, "kv_tokens": 0}


@pytest.fixture(scope="module")
def pressure_server(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("logs") / "pressure.log",
        "--decode_pool_pages",
        str(POOL_PAGES),
        "--data_dir",
        str(tmp_path_factory.mktemp("voices")),
        "--admission_wait_s",
        "120",
        "--request_timeout_s",
        str(TIME_LIMIT_S),
    )
    with serving(srv):
        yield srv


@pytest.fixture(scope="module")
def voices(pressure_server):
    with pressure.voices_for(pressure_server.url, 2, nonce=20) as v:
        yield v


def test_a_seeded_mix_ends_well_frees_everything_and_ends_the_same_twice(pressure_server, voices):
    """Streams and non-streams, saved and new voices, 1 s up to the pool's size and past it, in bursts, a client
    that leaves mid-stream: each ends with its full audio, its deserved 413 or its client's leaving; no stream
    is cut after its 200; slots, decode pages and KV go back to zero; run again (new voices new again), the same
    outcome for every request."""
    jobs = make_mix(seed=20, num_jobs=10, pool_pages=POOL_PAGES, num_saved=2)
    assert {expected(j, POOL_PAGES) for j in jobs} == {"ok", "too_large", "client_left"}  # the mix covers it all
    assert {j.is_stream for j in jobs} == {True, False} and {j.voice >= 0 for j in jobs} == {True, False}
    first, outcomes = pressure.run_round(pressure_server.url, jobs, voices, POOL_PAGES, TIME_LIMIT_S + 30)
    report = [asdict(o) for o in outcomes]
    assert first["lost"] == [] and first["cut_after_200"] == [] and first["mismatched"] == [], report
    assert first["held_when_idle"] == {}
    again, outcomes2 = pressure.run_round(
        pressure_server.url, jobs, replace(voices, nonce=21), POOL_PAGES, TIME_LIMIT_S + 30
    )
    assert again["lost"] == [] and again["held_when_idle"] == {}, [asdict(o) for o in outcomes2]
    assert signature(outcomes2) == signature(outcomes)


def test_a_non_stream_request_larger_than_the_pool_is_refused_at_once(pressure_server, voices):
    """Issue 20's first reproduction (fixed_speech_tokens=1240, stream=false) on a pool too small for it: a clear
    413 naming both sizes, before anything runs, not a silent wait for the time limit. (On the default pool it
    returns its audio: `python -m light_tts.bench.pressure --scenario repro`; the engine side is
    test_decode_engine.py's test_an_utterance_past_the_pass_budget_runs_alone...)"""
    (out,) = pressure.run_mix(pressure_server.url, [Job(0, False, -1, 1240, 0.0)], voices, TIME_LIMIT_S + 30)
    assert (out.status, out.kind) == (413, "too_large"), asdict(out)
    assert f"needs {pages_needed(1240)} flow-cache pages, the pool has {POOL_PAGES}" in out.error


def test_eight_concurrent_streams_four_times_the_pool_all_complete(pressure_server, voices):
    """Issue 20's second reproduction, scaled to this pool: 8 concurrent 48-s streams of distinct voices need 4.2
    times the CPU's default 96 pages (8 x 50 pages); here 8 concurrent 6-s streams of distinct voices need 4 times
    these 16 (8 x 8 pages), through the same admission, waits and preemptions, at an eighth of the CPU time (the
    full-size run takes minutes here: `python -m light_tts.bench.pressure --scenario repro`). It stalled until the
    time limit before (test_decode_admission.py's test_a_stuck_step_runs_the_oldest_playing_stream...). Every
    stream gets its whole audio, none is cut, and the pool is free again after."""
    jobs = [Job(i, True, -1, 150, 0.0) for i in range(8)]
    assert sum(pages_needed(j.tokens) for j in jobs) == 4 * POOL_PAGES
    waits_before = server_counters(pressure_server.url)["page_waits"]
    outcomes = pressure.run_mix(pressure_server.url, jobs, replace(voices, nonce=22), TIME_LIMIT_S + 30)
    assert [o.kind for o in outcomes] == ["ok"] * 8, [asdict(o) for o in outcomes]
    assert pressure.wait_idle(pressure_server.url) == IDLE
    assert server_counters(pressure_server.url)["page_waits"] > waits_before  # the pool was the bound


def test_no_traceback_in_the_log(pressure_server):
    httpx.get(f"{pressure_server.url}/metrics", timeout=10)  # the server is up after all of the above
    log = pressure_server.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
