"""The server's per-stage breakdown of time to first audio, as the capacity benchmark sees it.

The server sends a W3C `Server-Timing` header with every synthesis (server/ipc/stage_trace.py): one `name;dur=MS`
metric per stage its first audio crossed, then `total`. A streamed response's headers leave with its first
chunk, so its `total` ends when the HTTP worker took that chunk; what the client waited beyond it ("network":
its TTFA minus `total`) is the write, the network and the client's own read. This module parses the header (the
W3C grammar, independently of the server's writer), summarizes stages over a level's requests and prints them.
"""

from __future__ import annotations

import re

from light_tts.bench.serving.player import percentile

TOTAL, NETWORK = "total", "network"  # the server's total; the client's TTFA minus it
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*(?:=\s*({_TOKEN}|\"(?:[^\"\\]|\\.)*\"))?")


def parse_server_timing(header: str | None) -> dict[str, float]:
    """Metric name -> seconds (its `dur` parameter, in ms on the wire) of a Server-Timing header value. Metrics
    without `dur` get 0, malformed entries are skipped, and a repeated name keeps its first value (as browsers do)."""
    out: dict[str, float] = {}
    for entry in _split_metrics(header or ""):
        name = re.match(rf"\s*({_TOKEN})", entry)
        if name is None:
            continue
        params, pos = {}, name.end()
        while (m := _PARAM.match(entry, pos)) is not None:
            params.setdefault(m.group(1).lower(), (m.group(2) or "").strip('"'))
            pos = m.end()
        try:
            seconds = float(params.get("dur") or 0) / 1000.0
        except ValueError:
            seconds = 0.0
        out.setdefault(name.group(1), seconds)
    return out


def _split_metrics(header: str) -> list[str]:
    """The comma-separated entries of a header value, leaving commas inside quoted strings alone."""
    entries, current, quoted, escaped = [], [], False, False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    return entries


def stage_summary(records: list[dict]) -> dict[str, dict[str, float | None]]:
    """Stage -> p50, p95 and mean seconds over the records that carry the server's stages (`stages_s`), in the
    order the server listed them, then the client's NETWORK share; {} when the server sent no Server-Timing."""
    timed = [r for r in records if r.get("stages_s")]
    names: list[str] = []
    for r in timed:
        names += [n for n in r["stages_s"] if n not in names]
    values = {n: [r["stages_s"][n] for r in timed if n in r["stages_s"]] for n in names}
    if TOTAL in values:
        values[NETWORK] = [
            r["ttfa_s"] - r["stages_s"][TOTAL] for r in timed if TOTAL in r["stages_s"] and r.get("ttfa_s") is not None
        ]
    return {
        n: {"p50": percentile(v, 50), "p95": percentile(v, 95), "mean": sum(v) / len(v) if v else None}
        for n, v in values.items()
    }


def format_stage_table(level: dict) -> str:
    """The stage table of one level (ms), as --breakdown prints it."""
    stages = level.get("stages") or {}
    load = f"concurrency {level['concurrency']}" if "concurrency" in level else f"rate {level['rate']}/s"
    if not stages:
        return f"{load}: no stage breakdown (the server sent no Server-Timing header)"
    lines = [
        f"{load}: where first audio goes (ms over {level['requests']} requests; TTFA p50 "
        f"{_ms(level.get('ttfa_p50'))}, p95 {_ms(level.get('ttfa_p95'))})",
        f"  {'stage':<14}{'p50':>9}{'p95':>9}{'mean':>9}",
    ]
    for name, q in stages.items():
        if name == TOTAL:
            lines.append("  " + "-" * 41)
        lines.append(f"  {name:<14}{_ms(q['p50']):>9}{_ms(q['p95']):>9}{_ms(q['mean']):>9}")
    return "\n".join(lines)


def format_stage_levels(levels: list[dict], quantile: str = "p50") -> str:
    """One table of every level side by side: a stage per row, a level per column (ms at `quantile`)."""
    names: list[str] = []
    for level in levels:
        names += [n for n in level.get("stages") or {} if n not in names]
    heads = [f"c={lv['concurrency']}" if "concurrency" in lv else f"r={lv['rate']}" for lv in levels]
    lines = [f"stage {quantile} (ms) by level", f"  {'stage':<14}" + "".join(f"{h:>9}" for h in heads)]
    for name in names:
        cells = [_ms((lv.get("stages") or {}).get(name, {}).get(quantile)) for lv in levels]
        lines.append(f"  {name:<14}" + "".join(f"{c:>9}" for c in cells))
    lines.append(f"  {'ttfa (client)':<14}" + "".join(f"{_ms(lv.get('ttfa_' + quantile)):>9}" for lv in levels))
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"
