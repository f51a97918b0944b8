"""Pressure benchmark (issue 20): seeded mixes of streams and non-streams against a server whose flow-cache pool
is small on purpose, mix after mix, held to issue 20's promises (the mixes and the verdict: pressure_mix.py).

    python -m light_tts.bench.pressure [--url URL] --duration_s 600 --seed N --out result.json [-- SERVER FLAGS]

Without --url it starts its own CPU server (the tiny random model with `--decode_pool_pages 24`, then SERVER
FLAGS); the pool's size is read from /metrics either way. Mixes run seed after seed until --duration_s is up,
each once (or twice with --repeat, whose outcomes must match request by request); after each the server must go
back to holding no request slot, decode page or LLM KV token (voice prefixes kept for reuse aside). It prints and
writes the counts (requests, ok, client_left, 413, 429, lost and cut_after_200: both must be 0), first-audio and
end-time percentiles, the longest time to an end, the server's preemptions, 429s and waits over the run, and what
it held at the end; the exit code is 0 when the run passed.

`--scenario repro` runs the issue's two reproductions on a server with the default pool instead: one 1,240-token
non-stream request (its audio, or at once a 413 where the pool is too small), then 8 concurrent 48-s streams of
distinct voices (all complete, none cut).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import httpx

from light_tts.bench.serving.local_server import local_server, prompt_pcm, wav_bytes
from light_tts.bench.serving.pressure_mix import (
    BYTES_PER_TOKEN,
    PROMPT_SECONDS,
    Job,
    Outcome,
    judge,
    latencies,
    make_mix,
    signature,
)
from light_tts.bench.serving.server_api import SavedVoices, counter_delta, server_counters
from light_tts.bench.serving.stream_client import Voices, tagged
from light_tts.bench.soak import held, sample

PROMPT_TEXT = "A voice for the pressure test."
TEXT = "Pressure test number {}: every request ends well."


@contextmanager
def voices_for(url: str, num_saved: int, nonce: int):
    """Voices of a run: `num_saved` distinct voices saved through /v1/audio/voices (deleted on exit) and named by
    id; a new voice is saved voice 0's audio tagged with (nonce, request index): distinct bytes, a cache miss."""
    base = wav_bytes(prompt_pcm(PROMPT_SECONDS))
    wavs = [tagged(base, 1_000_000 + k) for k in range(max(1, num_saved))]
    with SavedVoices(url, "api" if num_saved else "bytes", wavs[:num_saved], PROMPT_TEXT) as saved:
        yield Voices(wavs, PROMPT_TEXT, nonce, saved.ids)


def run_job(url: str, job: Job, voices: Voices, timeout_s: float) -> Outcome:
    out = Outcome(job.index)
    voice, files = voices.fields(job.voice if job.voice >= 0 else job.index, job.voice < 0)
    data = {
        **voice,
        "tts_text": TEXT.format(job.index),
        "stream": str(job.is_stream).lower(),
        "seed": str(job.index),
        "fixed_speech_tokens": str(job.tokens),
    }
    start = time.monotonic()
    try:
        with httpx.stream("POST", f"{url}/inference_zero_shot", data=data, files=files, timeout=timeout_s) as r:
            out.status = r.status_code
            if r.status_code != 200:
                body = r.read()
                try:
                    out.kind, out.error = json.loads(body)["kind"], json.loads(body)["error"]
                except (ValueError, KeyError, TypeError):
                    out.kind, out.error = f"http_{r.status_code}", body[:200].decode("utf-8", "replace")
                return out
            for chunk in r.iter_bytes():
                out.first_audio_s = out.first_audio_s or time.monotonic() - start
                out.audio_bytes += len(chunk)
                if job.leave_after_bytes is not None and out.audio_bytes >= job.leave_after_bytes:
                    out.kind = "client_left"
                    return out
        full = job.tokens * BYTES_PER_TOKEN
        out.kind = "ok" if out.audio_bytes == full else "short"
        out.error = "" if out.kind == "ok" else f"{out.audio_bytes} of {full} bytes"
    except httpx.HTTPError as e:  # after the 200: the transfer was cut; before it: no answer at all
        out.kind, out.error = "cut" if out.status == 200 else "transport", f"{type(e).__name__}: {e}"
    finally:
        out.end_s = time.monotonic() - start
    return out


def run_mix(url: str, jobs: list[Job], voices: Voices, timeout_s: float) -> list[Outcome]:
    """Each job sent at its time from its own thread; the outcomes in job order."""
    outcomes = [Outcome(job.index, kind="not_run") for job in jobs]
    start = time.monotonic()

    def send(k: int, job: Job) -> None:
        time.sleep(max(0.0, start + job.at_s - time.monotonic()))
        outcomes[k] = run_job(url, job, voices, timeout_s)

    threads = [threading.Thread(target=send, args=(k, job), daemon=True) for k, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def pool_pages(url: str) -> int:
    """Pages of the server's smallest decode pool (each decode process has its own)."""
    totals = [ranks["total"] for ranks in sample(url)["pages"].values() if "total" in ranks]
    if not totals:
        raise SystemExit(f"{url}/metrics shows no decode pool")
    return int(min(totals))


def wait_idle(url: str, timeout_s: float = 30.0) -> dict:
    """What the server still holds once it had up to timeout_s to settle (all zeros when nothing leaked): request
    slots, requests in flight, decode pages and LLM KV tokens outside the voice-prefix caches."""
    deadline = time.monotonic() + timeout_s
    while True:
        now_held = held(sample(url))
        if not any(now_held.values()) or time.monotonic() > deadline:
            return now_held
        time.sleep(0.25)


def run_round(url: str, jobs: list[Job], voices: Voices, pages: int, timeout_s: float) -> tuple[dict, list[Outcome]]:
    """One mix: its verdict (pressure_mix.judge) with what the server held once idle again (`held_when_idle`)."""
    outcomes = run_mix(url, jobs, voices, timeout_s)
    verdict = judge(jobs, outcomes, pages)
    verdict["held_when_idle"] = {k: v for k, v in wait_idle(url).items() if v}
    return verdict, outcomes


def mixes(url: str, args: argparse.Namespace) -> dict:
    pages, started, before = pool_pages(url), time.monotonic(), server_counters(url)
    runs: list[tuple[int, dict]] = []
    pairs: list[tuple[Job, Outcome]] = []
    not_repeated: list[int] = []
    with voices_for(url, args.saved_voices, args.seed) as voices:
        seed = args.seed
        while not runs or time.monotonic() - started < args.duration_s:
            jobs = make_mix(seed, args.requests, pages, args.saved_voices)
            signatures = []
            for again in range(1 + args.repeat):  # new voices: new bytes every run (no cache hit from the last)
                run_voices = replace(voices, nonce=(args.seed << 20) + 2 * (seed - args.seed) + again)
                verdict, outcomes = run_round(url, jobs, run_voices, pages, args.timeout_s)
                runs.append((seed, verdict))
                pairs += zip(jobs, outcomes)
                signatures.append(signature(outcomes))
                print(
                    f"seed {seed}{' again' if again else ''}: {verdict['by_outcome']}, lost {verdict['lost']}, "
                    f"held after {verdict['held_when_idle'] or 'nothing'} ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
            if signatures[1:] and signatures[1] != signatures[0]:
                not_repeated.append(seed)
            seed += 1
    kinds: dict[str, int] = {}
    for _, o in pairs:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
    result = {
        "url": url,
        "pool_pages": pages,
        "duration_s": round(time.monotonic() - started, 1),
        "mixes": len(runs),
        "requests": len(pairs),
        "ok": kinds.get("ok", 0),
        "client_left": kinds.get("client_left", 0),
        "too_large_413": kinds.get("too_large", 0),
        "overloaded_429": kinds.get("overloaded", 0),
        "lost": [(s, i) for s, v in runs for i in v["lost"]],
        "cut_after_200": [(s, i) for s, v in runs for i in v["cut_after_200"]],
        "mismatched": [(s, i) for s, v in runs for i in v["mismatched"]],
        "held_after_a_mix": [(s, v["held_when_idle"]) for s, v in runs if v["held_when_idle"]],
        "not_repeated": not_repeated,
        "by_outcome": kinds,
        **latencies([j for j, _ in pairs], [o for _, o in pairs]),
        "server": counter_delta(before, server_counters(url)),
        "final_in_use": wait_idle(url),
    }
    result["passed"] = not any(
        result[k] for k in ("lost", "cut_after_200", "mismatched", "held_after_a_mix", "not_repeated")
    ) and not any(result["final_in_use"].values())
    return result


def repro(url: str, args: argparse.Namespace) -> dict:
    """Issue 20's reproductions: a 1,240-token non-stream request, then 8 concurrent 48-s streams of distinct
    voices."""
    pages, before = pool_pages(url), server_counters(url)
    with voices_for(url, 0, args.seed) as voices:
        long_job = [Job(0, False, -1, 1240, 0.0)]
        first = run_mix(url, long_job, voices, args.timeout_s)
        streams = [Job(1 + i, True, -1, 1200, 0.0) for i in range(8)]
        second = run_mix(url, streams, voices, args.timeout_s)
    verdict, in_use = judge(long_job + streams, first + second, pages), wait_idle(url)
    return {
        "url": url,
        "pool_pages": pages,
        **verdict,
        "outcomes": [asdict(o) for o in first + second],
        **latencies(long_job + streams, first + second),
        "server": counter_delta(before, server_counters(url)),
        "final_in_use": in_use,
        "passed": not (verdict["lost"] or verdict["mismatched"] or any(in_use.values())),
    }


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    server_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m light_tts.bench.pressure", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one on the CPU)")
    p.add_argument("--scenario", choices=("mix", "repro"), default="mix")
    p.add_argument("--duration_s", type=float, default=600.0, help="mixes run seed after seed until then")
    p.add_argument("--seed", type=int, default=0, help="the first mix's seed (a failure replays from its seed)")
    p.add_argument("--requests", type=int, default=24, help="requests per mix")
    p.add_argument("--saved_voices", type=int, default=2)
    p.add_argument(
        "--repeat",
        action="store_true",
        help="run every mix twice; the outcomes must match (they do "
        "when no 429 depends on the host's speed: give the server a long wait, -- --admission_wait_s 120)",
    )
    p.add_argument(
        "--timeout_s",
        type=float,
        default=330.0,
        help="client-side bound on one request (past the "
        "server's --request_timeout_s, 300 by default: a request that reaches either is lost)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--log", type=Path, default=Path("pressure_server.log"), help="the local server's log")
    return p.parse_args(argv), server_flags


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parse_args(argv)
    with ExitStack() as stack:
        url = args.url
        if url is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pressure_voices_"))
            pool = [] if args.scenario == "repro" else ["--decode_pool_pages", "24"]
            flags = ["--device", "cpu", *pool, "--data_dir", data_dir, *extra]
            url = stack.enter_context(local_server(None, 0, flags, args.log, 600.0))
        result = (repro if args.scenario == "repro" else mixes)(url.rstrip("/"), args)
    result = {"command": "python -m light_tts.bench.pressure " + " ".join(argv), **result}
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
