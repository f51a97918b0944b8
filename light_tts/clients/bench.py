"""lighttts-bench: a concurrency sweep of zero-shot requests; writes JSON results and a PNG plot.

    lighttts-bench --prompt_wav voice.wav --prompt_text "what the voice says" --tts_text "Text to speak." \
        --concurrency 1 2 4 8 --requests_per_level 16 [--stream true] \
        [--url http://127.0.0.1:8080 --out zs_speed.json --plot zs_speed.png]

Per level: time to first audio (p50/p95/p99), real-time factor (latency / audio seconds), audio seconds
produced per wall-clock second, and failures, counted by the client (any non-200, exception or empty audio)
and by the server (/metrics, summed over all HTTP workers) as a cross-check. The plot needs matplotlib
(`pip install light-tts[bench]`); `--plot ''` skips it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from light_tts.clients.common import (
    BYTES_PER_SECOND,
    ClientError,
    auth_headers,
    build_parser,
    parse_args,
    report,
    run_client,
    str2bool,
    zero_shot_form,
)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def server_failures(metrics_text: str) -> float:
    """Sum of lighttts_requests_total over outcomes other than ok (every HTTP worker's count)."""
    total = 0.0
    for line in metrics_text.splitlines():
        m = re.match(r'lighttts_requests_total\{.*outcome="([^"]+)".*\} ([0-9.e+-]+)', line)
        if m and m.group(1) != "ok":
            total += float(m.group(2))
    return total


async def one_request(client, url: str, form) -> dict:
    data, files = form
    start, first, num_bytes = time.perf_counter(), None, 0
    try:
        async with client.stream("POST", f"{url}/inference_zero_shot", data=data, files=files) as response:
            async for chunk in response.aiter_bytes():
                if response.status_code == 200 and chunk:
                    first = time.perf_counter() - start if first is None else first
                    num_bytes += len(chunk)
            status = response.status_code
    except Exception as e:  # a dropped connection (mid-stream error) is a failure too, counted, not raised
        return {"ok": False, "error": repr(e)}
    latency = time.perf_counter() - start
    seconds = num_bytes / BYTES_PER_SECOND
    ok = status == 200 and seconds > 0
    return {
        "ok": ok,
        "status": status,
        "ttfa": first,
        "latency": latency,
        "audio_s": seconds,
        "rtf": latency / seconds if seconds else None,
    }


async def run_level(args, form, concurrency: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=args.timeout_s, limits=limits, headers=auth_headers(args.api_key)) as client:
        before = server_failures((await client.get(f"{args.url}/metrics")).text)
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded():
            async with semaphore:
                return await one_request(client, args.url, form)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(args.requests_per_level)))
        wall = time.perf_counter() - start
        after = server_failures((await client.get(f"{args.url}/metrics")).text)
    good = [r for r in results if r["ok"]]
    ttfa = [r["ttfa"] for r in good]
    rtf = [r["rtf"] for r in good]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "failures": len(results) - len(good),
        "server_failures": after - before,
        "wall_s": wall,
        "ttfa_p50": percentile(ttfa, 50),
        "ttfa_p95": percentile(ttfa, 95),
        "ttfa_p99": percentile(ttfa, 99),
        "rtf_p50": percentile(rtf, 50),
        "rtf_mean": sum(rtf) / len(rtf) if rtf else None,
        "audio_s_per_s": sum(r["audio_s"] for r in good) / wall,
        "errors": sorted({r.get("error") or f"HTTP {r.get('status')}" for r in results if not r["ok"]}),
    }


def plot(levels: list[dict], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ClientError("--plot needs matplotlib: pip install 'light-tts[bench]' (or pass --plot '')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [lv["concurrency"] for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for q in ("p50", "p95", "p99"):
        axes[0].plot(xs, [lv[f"ttfa_{q}"] for lv in levels], marker="o", label=q)
    axes[0].set(title="time to first audio", xlabel="concurrency", ylabel="seconds")
    axes[0].legend()
    axes[1].plot(xs, [lv["rtf_p50"] for lv in levels], marker="o")
    axes[1].set(title="real-time factor (p50)", xlabel="concurrency")
    axes[2].plot(xs, [lv["audio_s_per_s"] for lv in levels], marker="o")
    axes[2].set(title="audio seconds per second", xlabel="concurrency")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def sweep(args) -> list[dict]:
    form = zero_shot_form(args, stream=args.stream)  # the prompt file is read once, for every request
    levels = []
    for concurrency in args.concurrency:
        level = asyncio.run(run_level(args, form, concurrency))
        levels.append(level)
        print(json.dumps({k: v for k, v in level.items() if k != "errors"}), flush=True)
    with open(args.out, "w") as f:
        json.dump({"stream": args.stream, "levels": levels}, f, indent=2)
    if args.plot:
        plot(levels, args.plot)
    report(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return levels


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__, "http://127.0.0.1:8080", default_out=None)
    parser.add_argument("--stream", type=str2bool, default=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests_per_level", type=int, default=16)
    parser.add_argument("--timeout_s", type=float, default=600)
    parser.add_argument("--out", default="zs_speed.json", help="JSON results")
    parser.add_argument("--plot", default="zs_speed.png", help="PNG plot ('' for none)")
    args = parse_args(parser, argv)
    run_client("lighttts-bench", lambda: sweep(args))


if __name__ == "__main__":
    main()
