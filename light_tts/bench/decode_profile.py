"""Where a decode step's GPU time goes: the CUDA kernels of one eager flow pass (batch 1, a middle 1-second chunk)
and of one HiFT pass (32 rows; 1 row too), grouped by kernel name, with counts and total time, for a hot-path
variant (bench/engines/decode_parts.py VARIANTS), on any family's model directory (CosyVoice2 random full-size
weights when none is given).

    python -m light_tts.bench.decode_profile --out profile.json [--model-dir DIR] [--dtype fp16] [--top 25]
        [--variant new]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from light_tts.bench.engines.decode_parts import VARIANTS, hift_rows, make_engine, model_config, one_chunk_spec


def kernel_table(fn, top: int) -> dict:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    groups: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            groups[e.name[:90]].append(e.device_time_total)
    total_us = sum(sum(v) for v in groups.values())
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "kernels": sum(len(v) for v in groups.values()),
        "gpu_ms": total_us / 1e3,
        "top": [{"name": k, "count": len(v), "ms": sum(v) / 1e3} for k, v in rows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--variant", default="new", choices=sorted(VARIANTS))
    args = parser.parse_args(argv)
    cfg = model_config(args.model_dir or Path(tempfile.mkdtemp()))
    engine = make_engine(cfg, args.dtype, None, graphs=False, num_pages=64, max_pass_tokens=1024, variant=args.variant)
    inputs = engine.runner.build([one_chunk_spec(engine)], None)
    out = {
        "gpu": torch.cuda.get_device_name(),
        "family": cfg.family,
        "variant": args.variant,
        "flow_b1": kernel_table(lambda: engine.runner.paged(inputs), args.top),
    }
    out["hift_1row"] = kernel_table(hift_rows(engine, 1), args.top)
    out["hift_32rows"] = kernel_table(hift_rows(engine, 32), args.top)
    args.out.write_text(json.dumps(out, indent=1))
    for part in ("flow_b1", "hift_1row", "hift_32rows"):
        t = out[part]
        print(f"{part}: {t['kernels']} kernels, {t['gpu_ms']:.2f} ms of GPU time")
        for row in t["top"]:
            print(f"  {row['count']:5d} x {row['ms']:7.3f} ms  {row['name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
