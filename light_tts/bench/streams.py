"""Real-time capacity of the whole server: how many concurrent streams it holds with every listener on time.

    python -m light_tts.bench.streams --out OUT [--url URL | --model_dir DIR] [--concurrency 1 8 16 32 ...]
        [--rate R ... --duration S] [--new_voice_fraction F] [--fixed_speech_tokens 250]
        [--mode zero_shot|instruct|cross_lingual|vc] [-- SERVER FLAGS...]
    (an Orpheus model: --voice tara --token_rate 82.03125 --fixed_speech_tokens 826)

Without --url it starts the server itself (flags after `--`) and stops it at the end. Each streamed response is
played by a simulated real-time listener (light_tts.bench.serving.player); OUT/streams.json holds per-level summaries
(TTFA percentiles, stalled streams, stall seconds, deadline slack, audio s per s, failures) and every raw
request record, OUT/streams.png plots them against load, and "real-time streams held" is the largest
concurrency with p95 TTFA <= --max_ttfa_p95_s, no stall and no failure. --mode picks what every request asks
for: speech in a text mode (instruct: with --instruct_text), or vc: POST /v1/audio/voice-conversion of a
--vc_source_seconds recording into the voices (its audio is the source's length). Field meanings:
docs/bench-streams.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from light_tts.bench.serving.local_server import PROMPT_RATE, local_server, prompt_pcm, wav_bytes
from light_tts.bench.serving.player import poisson_arrivals
from light_tts.bench.serving.server_api import SavedVoices, counter_delta, server_counters
from light_tts.bench.serving.stage_table import format_stage_levels, format_stage_table
from light_tts.bench.serving.stream_client import TAG_SAMPLES, Share, Voices, run_share, split, tagged
from light_tts.bench.serving.stream_stats import score, streams_held, summarize

TTS_TEXT = "The quick brown fox jumps over the lazy dog and then runs far away into the quiet green forest"
START_MARGIN_S = 0.3  # client processes get the level's start time this far ahead, to start together


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for streams.json, streams.png, server.log")
    p.add_argument("--url", help="benchmark this running server instead of starting one")
    p.add_argument("--model_dir", help="model of the server started here (none: the server makes a tiny one)")
    p.add_argument("--port", type=int, default=0, help="port of the server started here (0: a free port)")
    p.add_argument("--ready_timeout_s", type=float, default=600)
    p.add_argument("--concurrency", type=int, nargs="+", help="closed-loop levels (default 1 8 16 32 without --rate)")
    p.add_argument(
        "--requests_per_level",
        type=int,
        help="closed loop: measured requests per level, after the ramp's (default 2 x concurrency)",
    )
    p.add_argument("--duration_per_level", type=float, help="closed loop: send for this many seconds per level")
    p.add_argument(
        "--ramp_s",
        type=float,
        help="stagger the workers' first requests (open loop: the arrivals) over "
        "this many seconds and leave them out of the scores (default: one utterance, "
        "fixed_speech_tokens / --token_rate; 0: every closed-loop worker starts at once and all is scored)",
    )
    p.add_argument("--rate", type=float, nargs="+", default=[], help="open-loop levels: Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=300, help="open loop: seconds of arrivals per rate")
    p.add_argument("--new_voice_fraction", type=float, default=0.0, help="requests with a never-seen voice")
    p.add_argument("--saved_voices", type=int, default=4, help="distinct saved voices, reused (warmed first)")
    p.add_argument(
        "--voices",
        choices=("auto", "api", "bytes"),
        default="auto",
        help="saved voices by id through /v1/audio/voices (api), as prompt bytes, or api when present",
    )
    p.add_argument(
        "--fixed_speech_tokens",
        type=int,
        default=250,
        help="speech tokens per sentence, forced by the server (25 = 1 s; 0: do not send the field; "
        "Orpheus: a multiple of 7, 826 = 118 frames = 10.07 s)",
    )
    p.add_argument(
        "--token_rate", type=float, default=25, help="the model's speech tokens per second of audio (Orpheus: 82.03125)"
    )
    p.add_argument(
        "--voice",
        help="a model's named voice (Orpheus: tara, ...): requests name it as voice_id, no "
        "prompt audio is uploaded or sent",
    )
    p.add_argument("--tts_model_name", help="the model the requests ask for (default: the server's first)")
    p.add_argument("--tts_text", default=TTS_TEXT, help="the text of every request (default: one sentence)")
    p.add_argument("--prompt_wav", type=Path, help="a 16-bit PCM WAV voice (default: a synthetic voice)")
    p.add_argument("--prompt_text", default="A short prompt.")
    p.add_argument("--prompt_seconds", type=float, default=5.0, help="length of the synthetic voice")
    p.add_argument("--client_procs", type=int, default=1, help="client processes to spread the streams over")
    p.add_argument("--timeout_s", type=float, default=600, help="client timeout per network operation")
    p.add_argument("--seed", type=int, default=0, help="request seeds are seed + request index")
    p.add_argument("--max_ttfa_p95_s", type=float, default=0.5, help="TTFA bound of 'real-time streams held'")
    p.add_argument(
        "--first_audio_only",
        action="store_true",
        help="close each stream at its first audio: "
        "time to first audio only (no playback, stalls or lengths), without waiting for the rest",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="print the server's stage table of time to first audio (its Server-Timing headers) after each level",
    )
    p.add_argument(
        "--mode",
        choices=("zero_shot", "instruct", "cross_lingual", "vc"),
        default="zero_shot",
        help="what every request asks for: speech in a text mode, or voice conversion (vc)",
    )
    p.add_argument("--instruct_text", default="Speak slowly and softly.", help="the instruction of --mode instruct")
    p.add_argument(
        "--vc_source_seconds",
        type=float,
        default=10.0,
        help="--mode vc: the source recording's length (a synthetic voice; its audio is as long)",
    )
    p.add_argument("server_args", nargs="*", help="flags of the server started here, after --")
    args = p.parse_args(argv)
    if args.url and (args.model_dir or args.server_args):
        p.error("--url targets a running server: --model_dir and server flags are for a server started here")
    if args.concurrency is None and not args.rate:
        args.concurrency = [1, 8, 16, 32]
    if not 0 <= args.new_voice_fraction <= 1:
        p.error("--new_voice_fraction must be in [0, 1]")
    if args.voice and args.new_voice_fraction:
        p.error("--voice (a named voice) has no new voices: --new_voice_fraction must be 0")
    if args.voice and args.mode != "zero_shot":
        p.error("--voice (a named voice: a model without modes) takes no --mode")
    if args.token_rate <= 0:
        p.error("--token_rate must be positive")
    counts = [*(args.concurrency or []), *args.rate, args.saved_voices, args.client_procs, args.duration]
    counts += [v for v in (args.requests_per_level, args.duration_per_level) if v is not None]
    if min(counts) <= 0:
        p.error("concurrency, rate, durations and counts must be positive")
    if args.mode == "vc":  # the audio is the source's: its length is what each request is scored against
        if not 0 < args.vc_source_seconds <= 30:
            p.error("--vc_source_seconds must be in (0, 30]")
        args.fixed_speech_tokens = round(25 * args.vc_source_seconds)
    if args.ramp_s is None:
        args.ramp_s = args.fixed_speech_tokens / args.token_rate
    return args


def load_voice(args: argparse.Namespace) -> bytes:
    """The base voice as wav_bytes output (the layout that stream_client.tagged edits)."""
    if args.prompt_wav is None:
        pcm, rate = prompt_pcm(args.prompt_seconds), PROMPT_RATE
    else:
        with wave.open(str(args.prompt_wav), "rb") as w:
            if w.getsampwidth() != 2:
                raise SystemExit(f"{args.prompt_wav}: expected 16-bit PCM")
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[:: w.getnchannels()]
            rate = w.getframerate()
    if len(pcm) < TAG_SAMPLES:
        raise SystemExit(f"the voice prompt needs at least {TAG_SAMPLES} samples")
    return wav_bytes(pcm, rate)


class Runner:
    """Runs load levels over the client processes (a process pool kept for the whole run, or this process)."""

    def __init__(self, args: argparse.Namespace, url: str, voices: Voices):
        self.args, self.url, self.voices = args, url, voices
        self.pool = None
        if args.client_procs > 1:
            self.pool = ProcessPoolExecutor(args.client_procs, mp_context=get_context("spawn"))
            list(self.pool.map(time.sleep, [0.1] * args.client_procs))  # start the workers before timing anything
        self.num_levels = 0

    def share(self, fixed_speech_tokens: int, new_voice_fraction: float) -> Share:
        self.num_levels += 1  # each level tags its new voices apart from every other level's
        voices = dataclasses.replace(self.voices, nonce=(self.voices.nonce << 8) + self.num_levels)
        source = None
        if self.args.mode == "vc":
            form = {"stream": "true", "response_format": "pcm", "seed": self.args.seed}
            source = wav_bytes(prompt_pcm(self.args.vc_source_seconds), PROMPT_RATE)
        else:
            form = {"tts_text": self.args.tts_text, "stream": "true", "seed": self.args.seed}
            form |= {"tts_model_name": self.args.tts_model_name} if self.args.tts_model_name else {}
            form |= {"instruct_text": self.args.instruct_text} if self.args.mode == "instruct" else {}
            form |= {"mode": "cross_lingual"} if self.args.mode == "cross_lingual" else {}
            if fixed_speech_tokens:
                form["fixed_speech_tokens"] = str(fixed_speech_tokens)
        return Share(
            self.url,
            voices,
            form,
            new_voice_fraction,
            self.args.timeout_s,
            start_epoch=0.0,
            first_audio_only=self.args.first_audio_only,
            source_wav=source,
        )

    def run(self, share: Share, load: dict, fixed_speech_tokens: int) -> dict:
        """One level; `server` holds the server's counters over it (ramp included), None without /metrics."""
        before = server_counters(self.url)
        share.start_epoch = time.time() + START_MARGIN_S
        parts = split(share, self.args.client_procs)
        results = list(self.pool.map(run_share, parts)) if self.pool else [run_share(p) for p in parts]
        if len({res["pid"] for res in results}) != len(parts):  # a pool process ran two shares one after the other
            raise RuntimeError("client processes did not run their shares at the same time")
        records = sorted((r for res in results for r in res["records"]), key=lambda r: r["index"])
        records = [
            score(r, 0 if share.first_audio_only else fixed_speech_tokens, self.args.token_rate) for r in records
        ]
        level = summarize(records, load, [lag for res in results for lag in res["lag_s"]])
        server = counter_delta(before, server_counters(self.url))
        return {**level, "ramp_s": share.ramp_s, "server": server, "records": records}

    def closed(
        self,
        concurrency: int,
        requests: int | None,
        duration_s: float | None,
        fixed: int,
        new_voice_fraction: float,
        ramp_s: float,
    ) -> dict:
        """`requests` measured requests (the ramp's first request per worker comes on top), or `duration_s`."""
        share = self.share(fixed, new_voice_fraction)
        share.concurrency, share.workers, share.ramp_s = concurrency, list(range(concurrency)), ramp_s
        share.max_requests = None if requests is None else requests + (concurrency if ramp_s > 0 else 0)
        share.duration_s = duration_s
        return self.run(share, {"concurrency": concurrency}, fixed)

    def open(self, rate: float, duration_s: float) -> dict:
        share = self.share(self.args.fixed_speech_tokens, self.args.new_voice_fraction)
        times = poisson_arrivals(rate, duration_s, random.Random(f"{self.args.seed}/{rate}"))
        share.arrivals, share.ramp_s = list(enumerate(times)), self.args.ramp_s
        return self.run(share, {"rate": rate, "duration_s": duration_s}, self.args.fixed_speech_tokens)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def describe(level: dict) -> str:
    load = f"concurrency {level['concurrency']}" if "concurrency" in level else f"rate {level['rate']}/s"
    return (
        f"{load}: {level['requests']} requests, {level['failures']} failed; TTFA p50/p95/p99 "
        f"{ms(level['ttfa_p50'])}/{ms(level['ttfa_p95'])}/{ms(level['ttfa_p99'])} ms; "
        f"{level['refused_429']} refused (429), {level['cut_after_200']} cut after their 200, "
        f"{(level['server'] or {}).get('decode_preemptions', 0):.0f} preemptions; "
        f"{level['stalled_streams']} stalled streams, {level['stall_s_total']:.2f} stall s; "
        f"{level['audio_s_per_s'] or 0:.1f} audio s/s; client lag max {ms(level['client_lag_s_max'])} ms"
        + (f"; errors {level['errors']}" if level["errors"] else "")
        + (
            "; WARNING: lengths not forced (does the server know fixed_speech_tokens?)"
            if level["forced_length_fraction"] not in (None, 1.0)
            else ""
        )
    )


def report(level: dict, breakdown: bool) -> None:
    print(describe(level), flush=True)
    if breakdown:
        print(format_stage_table(level), flush=True)


def benchmark(args: argparse.Namespace, url: str) -> dict:
    if args.voice:  # a model's named voice: nothing to upload, one voice to warm
        closed, opened = run_levels(args, url, Voices([], "", 0, named=args.voice), 1)
        via = "named"
    else:
        base = load_voice(args)
        # saved voice k > 0 is the base voice with its own bytes (tag k; new voices' tags carry a nonce above bit 32)
        saved = [base] + [tagged(base, k) for k in range(1, args.saved_voices)]
        with SavedVoices(url, args.voices, saved, args.prompt_text) as api:
            voices = Voices(saved, args.prompt_text, nonce=random.getrandbits(23), saved_ids=api.ids)
            closed, opened = run_levels(args, url, voices, len(saved))
            via = "api" if api.ids else "bytes"
    if args.breakdown and len(closed) + len(opened) > 1:
        for quantile in ("p50", "p95"):
            print(format_stage_levels(closed + opened, quantile), flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "command": sys.argv,
        "url": url,
        "settings": settings,
        "saved_voices_via": via,
        "real_time_streams_held": streams_held(closed, args.max_ttfa_p95_s),
        "closed_loop": closed,
        "open_loop": opened,
    }


def run_levels(args: argparse.Namespace, url: str, voices: Voices, num_voices: int) -> tuple[list, list]:
    """The warm-up (every voice once, so that the voice cache holds them before anything is measured), then the
    closed-loop and open-loop levels: (closed, opened)."""
    runner = Runner(args, url, voices)
    try:
        warm = runner.closed(num_voices, num_voices, None, min(25, args.fixed_speech_tokens), 0.0, 0.0)
        if warm["failures"]:
            raise SystemExit(f"warm-up failed: {warm['errors']}")
        closed, opened = [], []
        for c in args.concurrency or []:
            requests = None if args.duration_per_level else args.requests_per_level or 2 * c
            closed.append(
                runner.closed(
                    c, requests, args.duration_per_level, args.fixed_speech_tokens, args.new_voice_fraction, args.ramp_s
                )
            )
            report(closed[-1], args.breakdown)
        for rate in args.rate:
            opened.append(runner.open(rate, args.duration))
            report(opened[-1], args.breakdown)
    finally:
        runner.close()
    return closed, opened


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = args.url or stack.enter_context(
            local_server(args.model_dir, args.port, args.server_args, args.out / "server.log", args.ready_timeout_s)
        )
        result = benchmark(args, url.rstrip("/"))
    (args.out / "streams.json").write_text(json.dumps(result, indent=1))
    from light_tts.bench.serving.stream_plot import plot

    plot(result, args.out / "streams.png")
    print(
        f"real-time streams held: {result['real_time_streams_held']} (p95 TTFA <= {args.max_ttfa_p95_s} s, "
        f"no stall, no failure); wrote {args.out / 'streams.json'} and {args.out / 'streams.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
