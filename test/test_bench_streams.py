"""Pure logic of the capacity benchmark (light_tts.bench.streams): the real-time player, stall counting, scores,
"streams held", arrival schedules, voice mixes and the split over client processes. Synthetic arrival times:
no server, no sleeps."""

import dataclasses
import io
import random
import wave

import numpy as np
import pytest

from light_tts.bench import streams
from light_tts.bench.serving.local_server import prompt_pcm, wav_bytes
from light_tts.bench.serving.player import is_new_voice, percentile, play, poisson_arrivals, samples_per_chunk
from light_tts.bench.serving.stream_client import Share, Voices, request_form, split, tagged
from light_tts.bench.serving.stream_stats import audio_rate, is_held, score, streams_held, summarize

SR = 24000


def test_player_without_stall_reports_slack_of_every_chunk():
    # 1 s of audio at 0.2 s, then 1 s at 0.5 s (buffer runs dry at 1.2: slack 0.7), then 1 s at 1.9 (slack 0.3)
    pb = play([0.2, 0.5, 1.9], [SR, SR, SR])
    assert (pb.ttfa_s, pb.audio_s, pb.stalls, pb.stall_s) == (0.2, 3.0, 0, 0.0)
    assert pb.slack_s == pytest.approx([0.7, 0.3])
    assert pb.played_until_s == pytest.approx(3.2)


def test_player_counts_each_stall_and_the_silence_heard():
    # 0.5 s at 0 (dry at 0.5); 0.5 s at 0.8: stall 0.3, plays until 1.3; 0.5 s at 1.0: fine, until 1.8;
    # 0.5 s at 2.5: stall 0.7
    pb = play([0.0, 0.8, 1.0, 2.5], [SR // 2] * 4)
    assert pb.stalls == 2
    assert pb.stall_s == pytest.approx(1.0)
    assert pb.slack_s == pytest.approx([-0.3, 0.3, -0.7])
    assert pb.min_slack_s == pytest.approx(-0.7)
    assert pb.played_until_s == pytest.approx(3.0)


def test_chunk_arriving_exactly_when_the_buffer_runs_dry_is_no_stall():
    pb = play([0.0, 1.0], [SR, SR])
    assert (pb.stalls, pb.stall_s, pb.slack_s) == (0, 0.0, [0.0])


def test_player_starts_at_the_first_nonempty_chunk_and_handles_no_audio():
    pb = play([0.1, 0.3, 0.4], [0, SR, SR])
    assert pb.ttfa_s == 0.3 and pb.stalls == 0 and pb.slack_s == pytest.approx([0.9])
    empty = play([], [])
    assert (empty.ttfa_s, empty.audio_s, empty.stalls, empty.min_slack_s) == (None, 0.0, 0, None)


def test_reads_that_split_a_sample_count_it_once_complete():
    assert samples_per_chunk([3, 1, 5, 7]) == [1, 1, 2, 4]
    assert sum(samples_per_chunk([1] * 9)) == 4


def test_percentile_interpolates_like_numpy():
    values = [random.Random(3).random() for _ in range(37)]
    for q in (0, 5, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([], 50) is None
    assert percentile([2.0], 99) == 2.0


@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (1.0, 100), (0.25, 25), (0.5, 50), (0.1, 10)])
def test_new_voice_mix_is_exact_and_spread(fraction, expected):
    flags = [is_new_voice(i, fraction) for i in range(100)]
    assert sum(flags) == expected
    assert sum(flags[:20]) == int(20 * fraction)  # evenly spread: any prefix holds its share


def test_poisson_schedule_is_reproducible_and_has_exponential_gaps():
    times = poisson_arrivals(50.0, 100.0, random.Random(7))
    assert times == poisson_arrivals(50.0, 100.0, random.Random(7))
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 100.0
    assert abs(len(times) - 5000) < 5 * 5000**0.5  # Poisson count: mean 5000, sd ~71
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: coefficient of variation 1


def record(
    index, chunk_s, chunk_bytes, status=200, error=None, voice="saved", is_ramp=False, start_s=0.0, latency_s=None
):
    return {
        "index": index,
        "voice": voice,
        "is_ramp": is_ramp,
        "start_s": start_s,
        "status": status,
        "error": error,
        "chunk_s": chunk_s,
        "chunk_bytes": chunk_bytes,
        "latency_s": latency_s if latency_s is not None else (chunk_s[-1] if chunk_s else 0.1),
    }


def test_score_marks_success_stalls_and_forced_length():
    n = 2 * 25 * 960  # bytes of 25 speech tokens = 1 s
    ok = score(record(0, [0.1, 0.5], [n, n]), fixed_speech_tokens=25)
    assert ok["ok"] and ok["stalls"] == 0 and ok["is_forced_length"] and ok["ttfa_s"] == 0.1
    assert ok["rtf"] == pytest.approx(0.5 / 2.0)
    late = score(record(1, [0.1, 1.6], [n, n + 2]), fixed_speech_tokens=25)  # one sample too many
    assert late["stalls"] == 1 and late["stall_s"] == pytest.approx(0.5) and not late["is_forced_length"]
    assert score(record(2, [0.1], [n]), fixed_speech_tokens=0)["is_forced_length"] is None
    refused = score(record(3, [], [], status=429, error="server full"), 25)
    cut = score(record(4, [0.1], [n], error="RemoteProtocolError: incomplete chunked read"), 25)
    assert not refused["ok"] and not cut["ok"]
    frames = 2 * 118 * 2048  # Orpheus: 826 ids = 118 frames of 2048 samples
    assert score(record(5, [0.1, 0.2], [frames, frames]), 826, token_rate=82.03125)["is_forced_length"]
    assert not score(record(6, [0.1], [frames + 2]), 826, token_rate=82.03125)["is_forced_length"]


def test_summary_of_a_level():
    n = 2 * SR  # bytes of 1 s
    records = [
        score(record(0, [0.1, 0.5], [n, n], voice="saved", is_ramp=True), 0),  # not scored
        score(record(1, [0.2, 0.6], [n, n], voice="saved", start_s=1.0), 0),
        score(record(2, [0.3, 1.8], [n, n], voice="new", start_s=1.5), 0),  # stalls 0.5 s
        score(record(3, [0.4, 0.5], [n, n], voice="new", start_s=2.0), 0),
        score(record(4, [], [], status=429, error="full", voice="saved", start_s=2.5), 0),
    ]
    lv = summarize(records, {"concurrency": 4}, client_lag_s=[0.001, 0.002])
    assert (lv["concurrency"], lv["requests"], lv["failures"]) == (4, 4, 1)
    assert lv["errors"] == {"HTTP 429: full": 1}
    assert (lv["stalled_streams"], lv["stalls_total"]) == (1, 1)
    assert lv["stalled_fraction"] == pytest.approx(1 / 3)
    assert lv["stall_s_total"] == pytest.approx(0.5) and lv["stall_s_max"] == pytest.approx(0.5)
    assert lv["ttfa_p50"] == pytest.approx(0.3)
    assert lv["by_voice"]["saved"]["requests"] == 2 and lv["by_voice"]["new"]["ttfa_p50"] == pytest.approx(0.35)
    assert lv["audio_s_total"] == pytest.approx(6.0)
    assert lv["slack_s_min"] == pytest.approx(-0.5)
    assert lv["client_lag_s_max"] == 0.002
    assert lv["forced_length_fraction"] is None
    assert (lv["refused_429"], lv["cut_after_200"]) == (1, 0)
    assert not is_held(lv, 0.5)  # a failure (and a stall)
    cut = score(record(5, [0.1], [n], error="RemoteProtocolError: incomplete chunked read", start_s=1.0), 0)
    assert summarize([cut], {"concurrency": 1}, client_lag_s=[])["cut_after_200"] == 1


def test_audio_rate_counts_the_steady_window():
    # measured requests start at 1.0 and 3.0: the window [1, 3) holds 1 s (ramp record, at 1.5) + 1 s (at 1.2)
    # + 0.5 s (at 2.0); the chunks at 3.5 are outside (48000 bytes = 1 s)
    records = [
        record(0, [1.5], [48000], is_ramp=True),
        record(1, [0.2, 1.0, 2.5], [48000, 24000, 48000], start_s=1.0),
        record(2, [0.5], [48000], start_s=3.0),
    ]
    assert audio_rate(records) == pytest.approx(2.5 / 2.0)
    # all started together: one median latency from the start
    together = [record(i, [0.5, 1.5], [48000, 48000], latency_s=2.0) for i in range(3)]
    assert audio_rate(together) == pytest.approx(6.0 / 2.0)


def level(concurrency, ttfa_p95, stalled=0, failures=0, requests=4):
    return {
        "concurrency": concurrency,
        "requests": requests,
        "failures": failures,
        "stalled_streams": stalled,
        "ttfa_p95": ttfa_p95,
    }


def test_streams_held_is_the_largest_level_that_meets_every_bound():
    levels = [level(1, 0.1), level(8, 0.3), level(16, 0.6), level(32, 0.4, stalled=1), level(64, 0.45, failures=1)]
    assert streams_held(levels, 0.5) == 8
    assert streams_held(levels, 0.7) == 16
    assert streams_held([level(1, 0.9)], 0.5) == 0
    assert streams_held([level(4, None, requests=4, failures=4)], 0.5) == 0
    assert streams_held([{"rate": 3.0, **level(0, 0.1)}, level(2, 0.1)], 0.5) == 2  # open-loop levels never count


def test_new_voices_have_distinct_bytes_of_the_same_sound():
    base = wav_bytes(prompt_pcm(0.5))
    a, b, c = tagged(base, 1), tagged(base, 2), tagged(base, 2**40 + 1)
    assert len({base, a, b, c}) == 4 and tagged(base, 2) == b and tagged(base, 0) == base
    with wave.open(io.BytesIO(c)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    diff = pcm.astype(int) - np.frombuffer(base[44:], dtype="<i2")
    assert np.abs(diff).max() == 1 and np.count_nonzero(diff) == 2 and not diff[:-64].any()


def test_voices_name_saved_ones_by_bytes_or_id_and_new_ones_by_fresh_bytes():
    saved = [wav_bytes(prompt_pcm(0.2)), tagged(wav_bytes(prompt_pcm(0.2)), 1)]
    voices = Voices(saved, "text", nonce=5)
    fields, files = voices.fields(3, is_new=False)
    assert fields == {"prompt_text": "text"} and files["prompt_wav"][1] == saved[1]
    news = {voices.fields(i, is_new=True)[1]["prompt_wav"][1] for i in range(6)}
    other_run = Voices(saved, "text", nonce=6).fields(0, is_new=True)[1]["prompt_wav"][1]
    assert len(news | {other_run} | set(saved)) == 9
    by_id = Voices(saved, "text", nonce=5, saved_ids=["voice_a", "voice_b"])
    assert by_id.fields(2, is_new=False) == ({}, {"voice_id": (None, "voice_a")})  # a multipart field
    assert "prompt_wav" in by_id.fields(2, is_new=True)[1]
    assert Voices([], "", 0, named="tara").fields(4, is_new=False) == ({}, {"voice_id": (None, "tara")})


def test_split_over_client_processes_keeps_every_worker_and_arrival_once():
    share = Share("http://x", Voices([b""], "", 0), {}, 0.0, 1.0, 0.0, concurrency=10, workers=list(range(10)))
    parts = split(share, 4)
    assert [p.workers for p in parts] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    assert [p.workers for p in split(share, 16)] == [[w] for w in range(10)]  # no process without a worker
    share.arrivals = [(i, 0.1 * i) for i in range(7)]
    parts = split(share, 3)
    assert sorted(a for p in parts for a in p.arrivals) == share.arrivals and len(parts) == 3


def test_a_voice_conversion_share_sends_the_source_and_names_the_target():
    saved = [wav_bytes(prompt_pcm(0.2))]
    source = wav_bytes(prompt_pcm(0.3))
    by_id = Voices(saved, "text", nonce=5, saved_ids=["voice_a"])
    share = Share(
        "http://x", by_id, {"stream": "true", "response_format": "pcm", "seed": 10}, 0.0, 1.0, 0.0, source_wav=source
    )
    assert share.path == "/v1/audio/voice-conversion"
    form, files, kind = request_form(share, 3)
    assert form == {"stream": "true", "response_format": "pcm", "seed": "13"} and kind == "saved"
    assert files["audio"][1] == source and files["voice"] == (None, "voice_a") and "prompt_text" not in form
    _, files, kind = request_form(dataclasses.replace(share, new_voice_fraction=1.0), 3)
    assert kind == "new" and files["prompt_audio"][1] != saved[0] and files["audio"][1] == source
    text = Share("http://x", by_id, {"tts_text": "Hi.", "seed": 0}, 0.0, 1.0, 0.0)
    assert text.path == "/inference_zero_shot" and "audio" not in request_form(text, 0)[1]


def test_mode_options_fill_the_form():
    args = streams.parse_args(["--out", "x", "--url", "http://x", "--mode", "vc", "--vc_source_seconds", "4"])
    assert args.fixed_speech_tokens == 100 and args.ramp_s == 4.0  # scored against the source's length
    runner = streams.Runner(args, "http://x", Voices([b""], "", 0))
    assert runner.share(100, 0.0).source_wav is not None and "tts_text" not in runner.share(100, 0.0).form
    args = streams.parse_args(["--out", "x", "--url", "http://x", "--mode", "instruct", "--instruct_text", "Softly."])
    form = streams.Runner(args, "http://x", Voices([b""], "", 0)).share(250, 0.0).form
    assert form["instruct_text"] == "Softly." and form["fixed_speech_tokens"] == "250"
    args = streams.parse_args(["--out", "x", "--url", "http://x", "--mode", "cross_lingual"])
    assert streams.Runner(args, "http://x", Voices([b""], "", 0)).share(250, 0.0).form["mode"] == "cross_lingual"
