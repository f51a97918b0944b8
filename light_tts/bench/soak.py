"""Soak: a steady open-loop load for a long time, watching the server's state as it goes.

    python -m light_tts.bench.soak --out OUT --rate R --duration 600 [--url URL | --model_dir DIR]
        [streams.py load flags...] [-- SERVER FLAGS...]

Poisson arrivals at --rate for --duration seconds (the load of light_tts.bench.streams: the same requests, voices
and real-time listeners; its flags apply), while /metrics is sampled every --sample_s: slots, requests in flight,
decode pool pages, LLM KV use, and every process's host and GPU memory. For "80% of capacity", take R as 0.8 x
the highest open-loop rate that streams.py holds. After the load it waits --settle_s for the server to go idle,
then judges (verdict()):
- lost: requests that ended with neither full audio nor an error (no audio, or audio short of the forced
  length; must be 0); failed: requests that ended with an
  error (must be 0 as well: the load is below capacity);
- leaked: anything still held once idle: slots, requests, decode pages and LLM KV slots outside the
  voice-prefix caches;
- memory flat: each process's host and GPU memory grew by at most --memory_slack_mb from the first to the last
  quarter of the run (medians; the first quarter is past the warm-up).
OUT/soak.json holds the verdict, the load's summary and records (as streams.py writes them) and every sample; the
exit code is 0 when the verdict passes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from light_tts.bench import streams
from light_tts.bench.serving.local_server import local_server
from light_tts.bench.serving.server_api import SavedVoices
from light_tts.bench.serving.stream_client import Voices, tagged

MB = 1 << 20


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--sample_s", type=float, default=5.0, help="seconds between /metrics samples")
    p.add_argument("--settle_s", type=float, default=60.0, help="how long the server may take to go idle after")
    p.add_argument(
        "--memory_slack_mb",
        type=float,
        default=64.0,
        help="growth per process allowed from the first to the last quarter (host and GPU each)",
    )
    p.add_argument("-h", "--help", action="store_true")
    own, rest = p.parse_known_args(argv)
    if own.help:
        p.print_help()
        print("\nload flags (light_tts.bench.streams):")
        streams.parse_args(["--help"])
    load = streams.parse_args(rest)
    if len(load.rate) != 1 or load.concurrency:
        raise SystemExit("a soak is one open-loop rate: give exactly one --rate and no --concurrency")
    if min(own.sample_s, own.settle_s) <= 0 or own.memory_slack_mb < 0:
        raise SystemExit("--sample_s and --settle_s must be positive, --memory_slack_mb not negative")
    return own, load


def sample(url: str) -> dict:
    """One look at the server's state from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict = {"t": time.time(), "resident_bytes": {}, "device_bytes": {}, "pages": {}, "kv_tokens": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "lighttts_request_slots" and labels.get("state") == "in_use":
                out["slots_in_use"] = s.value
            elif s.name == "lighttts_active_requests":
                out["active_requests"] = out.get("active_requests", 0) + s.value
            elif s.name == "lighttts_kv_cache_tokens":
                kv = out["kv_tokens"]
                kv[labels["state"]] = kv.get(labels["state"], 0) + s.value
            elif s.name == "lighttts_decode_pool_pages":
                out["pages"].setdefault(labels["rank"], {})[labels["state"]] = s.value
            elif s.name in ("lighttts_process_resident_bytes", "lighttts_device_memory_bytes"):
                kind = "resident_bytes" if "resident" in s.name else "device_bytes"
                out[kind][f"{labels['stage']}{labels['rank']}"] = s.value
    return out


class Sampler(threading.Thread):
    def __init__(self, url: str, every_s: float):
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.samples: list[dict] = []
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append(sample(self.url))
            except httpx.HTTPError as e:
                self.errors.append(f"{time.time():.1f}: {e!r}")
            self.stopped.wait(self.every_s)


def stream_pages(pages: dict) -> float:
    """Decode pages held by streams: used, less the idle voice prefixes kept for reuse."""
    return sum(ranks.get("used", 0) - ranks.get("cached", 0) for ranks in pages.values())


def held(s: dict) -> dict:
    """What the server holds in sample `s` (all zero when it is idle and nothing leaked)."""
    kv = s.get("kv_tokens", {})
    return {
        "slots": s.get("slots_in_use", 0),
        "requests": s.get("active_requests", 0),
        "decode_pages": stream_pages(s["pages"]),
        "kv_tokens": kv.get("used", 0) - kv.get("cached", 0),
    }


def growth(samples: list[dict], kind: str) -> dict[str, float]:
    """Per process: median of the last quarter less median of the first, in bytes."""
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    names = set().union(*(s[kind] for s in samples))
    out = {}
    for name in sorted(names):
        a = [s[kind][name] for s in first if name in s[kind]]
        b = [s[kind][name] for s in last if name in s[kind]]
        if a and b:
            out[name] = statistics.median(b) - statistics.median(a)
    return out


def verdict(records: list[dict], during: list[dict], idle: dict, memory_slack_mb: float) -> dict:
    """Pure: the soak's pass/fail from the load's scored records, the samples taken under load, and one idle
    sample taken after it."""
    # no audio and no error, or audio cut short of the forced length without an error
    lost = [
        r["index"]
        for r in records
        if (not r["ok"] and r["error"] is None and r["status"] in (None, 200))
        or (r["ok"] and r["is_forced_length"] is False)
    ]
    failed = [r["index"] for r in records if not r["ok"] and r["index"] not in lost]
    leaked = {k: v for k, v in held(idle).items() if v}
    host, device = growth(during, "resident_bytes"), growth(during, "device_bytes")
    grew = {
        f"{name} {kind}": round(v / MB, 1)
        for kind, series in (("host", host), ("gpu", device))
        for name, v in series.items()
        if v > memory_slack_mb * MB
    }
    return {
        "passed": not (lost or failed or leaked or grew) and len(during) >= 4,
        "requests": len(records),
        "lost": lost,
        "failed": failed,
        "leaked": leaked,
        "memory_grew_mb": grew,
        "samples": len(during),
        "host_growth_mb": {k: round(v / MB, 1) for k, v in host.items()},
        "gpu_growth_mb": {k: round(v / MB, 1) for k, v in device.items()},
        "peak": {k: max(held(s)[k] for s in during) for k in held(idle)} if during else {},
    }


def wait_idle(url: str, settle_s: float) -> dict:
    deadline = time.monotonic() + settle_s
    while True:
        s = sample(url)
        if not any(held(s).values()) or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


def soak(own: argparse.Namespace, args: argparse.Namespace, url: str) -> dict:
    base = streams.load_voice(args)
    saved = [base] + [tagged(base, k) for k in range(1, args.saved_voices)]
    with SavedVoices(url, args.voices, saved, args.prompt_text) as api:
        voices = Voices(saved, args.prompt_text, nonce=random.getrandbits(23), saved_ids=api.ids)
        runner = streams.Runner(args, url, voices)
        sampler = Sampler(url, own.sample_s)
        try:
            warm = runner.closed(len(saved), len(saved), None, min(25, args.fixed_speech_tokens), 0.0, 0.0)
            if warm["failures"]:
                raise SystemExit(f"warm-up failed: {warm['errors']}")
            sampler.start()
            level = runner.open(args.rate[0], args.duration)
        finally:
            sampler.stopped.set()
            runner.close()
        sampler.join()
        idle = wait_idle(url, own.settle_s)
    result = verdict(level["records"], sampler.samples, idle, own.memory_slack_mb)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in {**vars(args), **vars(own)}.items()}
    return {
        "command": sys.argv,
        "url": url,
        "settings": settings,
        "verdict": result,
        "idle": idle,
        "sample_errors": sampler.errors,
        "load": level,
        "samples": sampler.samples,
    }


def main(argv: list[str] | None = None) -> int:
    own, args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = args.url or stack.enter_context(
            local_server(args.model_dir, args.port, args.server_args, args.out / "server.log", args.ready_timeout_s)
        )
        result = soak(own, args, url.rstrip("/"))
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    v = result["verdict"]
    print(streams.describe(result["load"]))
    print(
        f"soak {'PASSED' if v['passed'] else 'FAILED'}: {v['requests']} requests, {len(v['lost'])} lost, "
        f"{len(v['failed'])} failed, leaked {v['leaked'] or 'nothing'}, memory growth host {v['host_growth_mb']} "
        f"gpu {v['gpu_growth_mb']} MB (slack {own.memory_slack_mb:g}), peak {v['peak']}; "
        f"wrote {args.out / 'soak.json'}"
    )
    return 0 if v["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
