"""The capacity benchmark's PNG: TTFA percentiles, stalled streams and audio seconds per second against load,
one row for the closed-loop sweep (x = concurrency) and one for open-loop rates (x = arrivals per second)."""

from __future__ import annotations

from pathlib import Path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (name, key, levels)
        for name, key, levels in (
            ("closed loop", "concurrency", result["closed_loop"]),
            ("open loop", "rate", result["open_loop"]),
        )
        if levels
    ]
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 4 * len(rows)), squeeze=False)
    bound = result["settings"]["max_ttfa_p95_s"]
    for (name, key, levels), ax in zip(rows, axes):
        xs = [lv[key] for lv in levels]
        xlabel = "concurrent streams" if key == "concurrency" else "arrivals per second"
        for q in ("p50", "p95", "p99"):
            ax[0].plot(xs, [lv[f"ttfa_{q}"] for lv in levels], marker="o", label=q)
        ax[0].axhline(bound, color="grey", linestyle="--", label=f"{bound:g} s")
        ax[0].set(title=f"time to first audio ({name})", xlabel=xlabel, ylabel="seconds")
        ax[0].legend()
        ax[1].plot(xs, [lv["stalled_streams"] for lv in levels], marker="o", label="stalled streams")
        ax[1].plot(xs, [lv["failures"] for lv in levels], marker="x", label="failures")
        ax[1].set(title=f"stalled streams ({name})", xlabel=xlabel, ylabel="streams")
        ax[1].legend()
        ax[2].plot(xs, [lv["audio_s_per_s"] for lv in levels], marker="o")
        ax[2].set(title=f"audio seconds per second ({name})", xlabel=xlabel)
        for a in ax:
            if key == "concurrency" and len(set(xs)) > 1:
                a.set_xscale("log", base=2)
            a.set_xticks(xs, [f"{x:g}" for x in xs])
            a.set_ylim(bottom=0)
            a.grid(True, alpha=0.3)
    fig.suptitle(f"real-time streams held: {result['real_time_streams_held']}")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
