"""Scoring of the capacity benchmark: per-request playback, per-level summaries, and "real-time streams held".

Pure functions over the raw records that light_tts.bench.serving.stream_client produces (dicts, as written to the JSON):
  index, voice ("saved" | "new"), is_ramp (sent while the load built up: kept, not summarized), start_s (since
  the level started), status (HTTP, None if no response),
  error (None or a message), latency_s (until the body ended), chunk_s (arrival of each network read since the
  request was sent), chunk_bytes (its size), server_timing (the response's Server-Timing header, or None).
"""

from __future__ import annotations

from collections import Counter

from light_tts.bench.serving.player import SAMPLE_RATE, percentile, play, samples_per_chunk
from light_tts.bench.serving.stage_table import parse_server_timing, stage_summary

COSYVOICE_TOKEN_RATE = 25  # speech tokens per second of audio (Orpheus: 82.03125, 7 per 2048 samples)


def score(record: dict, fixed_speech_tokens: int, token_rate: float = COSYVOICE_TOKEN_RATE) -> dict:
    """The record with what its listener experienced (player fields), whether it succeeded, and whether its length
    is the forced one (every sentence exactly `fixed_speech_tokens` tokens at `token_rate` tokens per second of
    audio; None when no length was forced)."""
    samples = samples_per_chunk(record["chunk_bytes"])
    pb = play(record["chunk_s"], samples)
    ok = record["status"] == 200 and record["error"] is None and pb.audio_s > 0
    num_samples = sum(samples)
    forced = round(fixed_speech_tokens * SAMPLE_RATE / token_rate)
    return {
        **record,
        "ok": ok,
        "ttfa_s": pb.ttfa_s,
        "audio_s": pb.audio_s,
        "stalls": pb.stalls,
        "stall_s": pb.stall_s,
        "min_slack_s": pb.min_slack_s,
        "slack_s": pb.slack_s,
        "rtf": record["latency_s"] / pb.audio_s if pb.audio_s else None,
        "stages_s": parse_server_timing(record.get("server_timing")),
        "is_forced_length": (num_samples > 0 and num_samples % forced == 0) if fixed_speech_tokens else None,
    }


def quantiles(values: list[float], prefix: str) -> dict:
    return {f"{prefix}_p{q}": percentile(values, q) for q in (50, 95, 99)}


def summarize(records: list[dict], load: dict, client_lag_s: list[float]) -> dict:
    """One load level from its scored records, leaving out the ramp's. `client_lag_s`: how late the client's event
    loop woke for its own timer (client overhead; large values mean the client, not the server, delayed chunk
    reads)."""
    audio_s_per_s = audio_rate(records)
    records = [r for r in records if not r["is_ramp"]]
    good = [r for r in records if r["ok"]]
    stalled = [r for r in good if r["stalls"]]
    slack = [s for r in good for s in r["slack_s"]]
    forced = [r["is_forced_length"] for r in good if r["is_forced_length"] is not None]
    by_voice = {}
    for kind in ("saved", "new"):
        ttfa = [r["ttfa_s"] for r in good if r["voice"] == kind]
        by_voice[kind] = {
            "requests": sum(r["voice"] == kind for r in records),
            **quantiles(ttfa, "ttfa"),
            "stages": stage_summary([r for r in good if r["voice"] == kind]),
        }
    return {
        **load,
        "requests": len(records),
        "failures": len(records) - len(good),
        # issue 20's promises: a stream is refused (429) before its 200 or not at all, and never cut after it
        "refused_429": sum(r["status"] == 429 for r in records),
        "cut_after_200": sum(r["status"] == 200 and not r["ok"] for r in records),
        "errors": dict(Counter(error_text(r) for r in records if not r["ok"])),
        **quantiles([r["ttfa_s"] for r in good], "ttfa"),
        "stalled_streams": len(stalled),
        "stalled_fraction": len(stalled) / len(good) if good else None,
        "stalls_total": sum(r["stalls"] for r in good),
        "stall_s_total": sum(r["stall_s"] for r in good),
        "stall_s_p95": percentile([r["stall_s"] for r in good], 95),
        "stall_s_max": max((r["stall_s"] for r in good), default=None),
        "slack_s_p5": percentile(slack, 5),
        "slack_s_p50": percentile(slack, 50),
        "slack_s_min": min(slack, default=None),
        "audio_s_total": sum(r["audio_s"] for r in good),
        "audio_s_per_s": audio_s_per_s,
        "rtf_p50": percentile([r["rtf"] for r in good], 50),
        "forced_length_fraction": sum(forced) / len(forced) if forced else None,
        "stages": stage_summary(good),  # the server's stages of time to first audio (Server-Timing)
        "by_voice": by_voice,
        "client_lag_s_p99": percentile(client_lag_s, 99),
        "client_lag_s_max": max(client_lag_s, default=None),
    }


def audio_rate(records: list[dict]) -> float | None:
    """Audio seconds received per second while the load was steady, counting every record's chunks (the ramp's
    too) that arrived in a window: from the first measured request's start to the last one's (closed loop: every
    worker busy; open loop: arrivals still coming), or for one median latency when they all started together."""
    measured = [r for r in records if not r["is_ramp"]]
    if not measured:
        return None
    start = min(r["start_s"] for r in measured)
    latency = percentile([r["latency_s"] for r in measured], 50)
    end = max(max(r["start_s"] for r in measured), start + latency)
    samples = sum(
        n
        for r in records
        for t, n in zip(r["chunk_s"], samples_per_chunk(r["chunk_bytes"]))
        if start <= r["start_s"] + t < end
    )
    return samples / SAMPLE_RATE / (end - start) if end > start else None


def error_text(record: dict) -> str:
    if record["error"] is not None:
        return record["error"] if record["status"] in (None, 200) else f"HTTP {record['status']}: {record['error']}"
    if record["status"] != 200:
        return f"HTTP {record['status']}"
    return "no audio"


def is_held(level: dict, max_ttfa_p95_s: float) -> bool:
    """A level is held in real time when every request succeeded, none stalled, and p95 TTFA is within bound."""
    return (
        level["requests"] > 0
        and level["failures"] == 0
        and level["stalled_streams"] == 0
        and level["ttfa_p95"] is not None
        and level["ttfa_p95"] <= max_ttfa_p95_s
    )


def streams_held(levels: list[dict], max_ttfa_p95_s: float) -> int:
    """Real-time streams held: the largest closed-loop concurrency that is held (0 when none is)."""
    return max((lv["concurrency"] for lv in levels if "concurrency" in lv and is_held(lv, max_ttfa_p95_s)), default=0)
