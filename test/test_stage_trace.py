"""The request trace's pure parts: the slot row (stamps, stamp_once, reset), stages from boundaries, the
first-chunk rule the LLM and the decode process share, the Server-Timing header and the benchmark's independent
parser of it, the stage summary, and the decode step timer on the CPU. The whole path is tested end to end in
test/e2e/test_first_audio_trace.py."""

import numpy as np
import pytest
import torch

from light_tts.bench.serving.stage_table import (
    NETWORK,
    TOTAL,
    format_stage_levels,
    format_stage_table,
    parse_server_timing,
    stage_summary,
)
from light_tts.decode.step_timer import StepTimer
from light_tts.server.ipc.stage_trace import (
    BOUNDARIES,
    STAGES,
    StageTrace,
    completes_first_chunk,
    server_timing,
    stage_seconds,
)


def test_slot_row_stamps_once_resets_and_reads_in_order():
    trace = StageTrace(np.zeros((3, len(BOUNDARIES))))
    trace.stamp(1, "received", 10.0)
    assert trace.stamp_once(1, "llm_queued", 11.0) and not trace.stamp_once(1, "llm_queued", 12.0)
    assert trace.read(1) == {"received": 10.0, "llm_queued": 11.0}
    assert trace.read(0) == {} and trace.is_stamped(1, "llm_queued") and not trace.is_stamped(2, "llm_queued")
    trace.reset(1)
    assert trace.read(1) == {}
    with pytest.raises(KeyError):
        trace.stamp(0, "no_such_boundary")


def test_stages_span_consecutive_boundaries_and_skip_missing_ones():
    times = {b: 100.0 + i for i, b in enumerate(BOUNDARIES)}
    assert stage_seconds(times) == {s: pytest.approx(1.0) for s in STAGES}
    del times["llm_queued"]  # the two stages touching it are left out
    assert set(stage_seconds(times)) == set(STAGES) - {"llm_wait", "prefill_wait"}


def test_server_timing_round_trips_through_the_benchmark_parser():
    times = {b: 50.0 + 0.001 * i * i for i, b in enumerate(BOUNDARIES[:-1])}  # a stream's header: no first bytes
    parsed = parse_server_timing(server_timing(times))
    assert list(parsed) == [*STAGES[:-1], TOTAL]
    for stage, seconds in stage_seconds(times).items():
        assert parsed[stage] == pytest.approx(seconds, abs=1e-6)
    assert parsed[TOTAL] == pytest.approx(times["audio_received"] - times["received"], abs=1e-6)
    assert server_timing({}) == ""


def test_parser_follows_the_w3c_grammar():
    header = (
        'cache;desc="Cache, Read";dur=23.2, db ; dur = 53 ; desc=x, app;dur=47.2, missedCache, '
        "db;dur=99, bad;dur=abc, ;dur=1"
    )
    assert parse_server_timing(header) == {
        "cache": pytest.approx(0.0232),
        "db": pytest.approx(0.053),
        "app": pytest.approx(0.0472),
        "missedCache": 0.0,
        "bad": 0.0,
    }
    assert parse_server_timing(None) == {} and parse_server_timing("") == {}


@pytest.mark.parametrize(
    "needed, steps, is_end, crossing",
    [
        (28, [10, 10, 10], False, 2),  # a stream crosses its first chunk with the third batch
        (28, [28, 5], False, 0),  # exactly on the first batch, and only once
        (28, [5, 5], True, 1),  # a sentence shorter than a chunk: its end is the first audio
        (None, [30, 30], True, 1),  # non-stream: the whole sentence
    ],
)
def test_first_chunk_is_crossed_once(needed, steps, is_end, crossing):
    num, crossed = 0, []
    for k, n in enumerate(steps):
        last = is_end and k == len(steps) - 1
        if completes_first_chunk(num, num + n, needed, last):
            crossed.append(k)
        num += n
    assert crossed == [crossing]


def record(ttfa, **stages_ms):
    return {"ttfa_s": ttfa, "stages_s": {k: v / 1000 for k, v in stages_ms.items()}}


def test_stage_summary_keeps_the_server_order_and_adds_the_network_share():
    records = [
        record(0.110, parse=1, flow=40, total=100),
        record(0.230, parse=3, flow=80, total=200),
        {"ttfa_s": 0.5, "stages_s": {}},
    ]  # a server without the header
    summary = stage_summary(records)
    assert list(summary) == ["parse", "flow", TOTAL, NETWORK]
    assert summary["flow"]["p50"] == pytest.approx(0.060) and summary["flow"]["mean"] == pytest.approx(0.060)
    assert summary[NETWORK]["p50"] == pytest.approx(0.020)
    assert stage_summary([{"ttfa_s": 0.5, "stages_s": {}}]) == {}
    level = {"concurrency": 2, "requests": 2, "ttfa_p50": 0.17, "ttfa_p95": 0.224, "stages": summary}
    table = format_stage_table(level)
    assert "flow" in table and "network" in table and "170.0" in table
    assert "c=2" in format_stage_levels([level, {**level, "concurrency": 4}])


def test_step_timer_on_the_cpu_reads_the_clock_at_each_point():
    ticks = iter([1.0, 1.5, 2.0])
    timer = StepTimer(torch.device("cpu"), lambda: next(ticks))
    timer.start()
    timer.mark("flow_done")
    timer.mark("hift_done")
    assert timer.times() == {"started": 1.0, "flow_done": 1.5, "hift_done": 2.0}
