"""The soak benchmark's judgement (light_tts.bench.soak.verdict): lost, failed and leaked requests and memory that
grows under a steady load each fail it; a clean run passes. The run itself is tested against the real server in
test/e2e/test_bench_streams_server.py."""

from __future__ import annotations

import pytest

from light_tts.bench import soak

MB = soak.MB


def record(index, ok=True, status=200, error=None, forced=True):
    return {"index": index, "ok": ok, "status": status, "error": error, "is_forced_length": forced if ok else None}


def state(resident_mb=500.0, device_mb=0.0, slots=0, pages_used=10, pages_cached=10, kv_used=30, kv_cached=30):
    return {
        "t": 0.0,
        "slots_in_use": slots,
        "active_requests": slots,
        "kv_tokens": {"used": kv_used, "cached": kv_cached, "total": 1000},
        "pages": {"0": {"used": pages_used, "cached": pages_cached, "total": 100}},
        "resident_bytes": {"decode0": resident_mb * MB, "http0": 80 * MB},
        "device_bytes": {"decode0": device_mb * MB},
    }


FLAT = [state(resident_mb=500 + (i % 3), device_mb=2000, slots=3, pages_used=40) for i in range(20)]


def test_a_clean_run_passes():
    v = soak.verdict([record(i) for i in range(10)], FLAT, state(), memory_slack_mb=64)
    assert v["passed"] and v["lost"] == v["failed"] == [] and v["leaked"] == {} and v["memory_grew_mb"] == {}
    assert v["peak"]["slots"] == 3 and v["peak"]["decode_pages"] == 30  # 40 used, 10 of them cached prefixes


@pytest.mark.parametrize(
    "bad,field",
    [
        (record(3, ok=False, error=None), "lost"),  # 200 and no audio, no error
        (record(3, ok=True, forced=False), "lost"),  # audio cut short without an error
        (record(3, ok=False, status=None, error=None), "lost"),  # no response at all and no error
        (record(3, ok=False, status=503, error="unavailable"), "failed"),
        (record(3, ok=False, status=200, error="stream cut"), "failed"),
    ],
)
def test_a_request_without_its_audio_fails_the_soak(bad, field):
    records = [record(i) for i in range(3)] + [bad]
    v = soak.verdict(records, FLAT, state(), memory_slack_mb=64)
    assert not v["passed"] and v[field] == [3]


@pytest.mark.parametrize(
    "idle,what", [(state(slots=1), "slots"), (state(pages_used=12), "decode_pages"), (state(kv_used=31), "kv_tokens")]
)
def test_anything_held_once_idle_is_a_leak(idle, what):
    v = soak.verdict([record(0)], FLAT, idle, memory_slack_mb=64)
    assert not v["passed"] and what in v["leaked"]


def test_memory_that_keeps_growing_fails_and_is_named():
    growing = [state(resident_mb=500 + 10 * i, device_mb=2000 + 20 * i) for i in range(20)]  # +10 / +20 MB a sample
    v = soak.verdict([record(0)], growing, state(), memory_slack_mb=64)
    assert not v["passed"]
    assert set(v["memory_grew_mb"]) == {"decode0 host", "decode0 gpu"}  # http0 stayed flat
    assert v["memory_grew_mb"]["decode0 gpu"] == pytest.approx(2 * v["memory_grew_mb"]["decode0 host"])
    assert soak.verdict([record(0)], growing, state(), memory_slack_mb=500)["passed"]


def test_too_few_samples_cannot_pass():
    assert not soak.verdict([record(0)], FLAT[:3], state(), memory_slack_mb=64)["passed"]


def test_a_soak_is_one_open_loop_rate():
    with pytest.raises(SystemExit):
        soak.parse_args(["--out", "x", "--concurrency", "4"])
    with pytest.raises(SystemExit):
        soak.parse_args(["--out", "x", "--rate", "1", "2"])
    own, load = soak.parse_args(["--out", "x", "--rate", "2", "--duration", "600", "--sample_s", "2"])
    assert (own.sample_s, load.rate, load.duration) == (2.0, [2.0], 600)
