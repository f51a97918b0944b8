"""GPU benchmark of Orpheus's codec: SNAC 24 kHz decodes of stream windows (4 frames, 8192 samples) in batches.

python -m light_tts.bench.snac --out snac.json [--model_dir DIR] [--dtype float32] [--device cuda]
(--device cpu --size tiny --batches 1,4 only checks that the benchmark runs.)

Measures, per batch of windows: the time of one batched decode with CUDA graphs, by the fused kernels
(--snac_kernels fused, in float32) and by the module graph (--snac_kernels module), and eagerly; the windows per
second the fused path sustains,
and the real-time streams that rate feeds (a stream needs 24000 / 2048 = 11.72 windows a
second; the reference decodes 4 frames to keep 1). Random weights of the released SNAC config unless --model_dir
(an Orpheus directory) is given; the weights do not change the cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from light_tts.decode.snac.snac_runner import SNACRunner
from light_tts.models.orpheus.config import SNACConfig
from light_tts.models.orpheus.frames import WINDOW
from light_tts.models.orpheus.snac import SNACDecoder

SIZES = {"full": SNACConfig(), "tiny": SNACConfig(encoder_dim=4, decoder_dim=64)}


def load_decoder(model_dir: Path | None, size: str) -> SNACDecoder:
    if model_dir is not None:
        from light_tts.decode.snac.snac_engine import load_snac
        from light_tts.families.orpheus import load_model_config

        return load_snac(load_model_config(model_dir))
    from light_tts.tools.make_orpheus import snac_state_dict

    return SNACDecoder.from_state_dict(
        SIZES[size], snac_state_dict(SIZES[size], torch.Generator().manual_seed(0)), "random"
    )


def time_decodes(runner: SNACRunner, batch: int, device: torch.device, repeats: int) -> float:
    rng = np.random.default_rng(batch)
    frames = rng.integers(0, 4096, (batch, WINDOW, 7))
    seeds, counters = list(range(batch)), [WINDOW] * batch
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        runner.decode(frames, seeds, counters).cpu()  # the engine copies each step's audio to the host too
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    model = load_decoder(args.model_dir, args.size).to(device)
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    fused = device.type == "cuda" and dtype == torch.float32  # the fused kernels run float32 on a GPU
    graphs = SNACRunner(model, device, max(batches), use_graphs=True, dtype=dtype, use_fused=fused)
    module = SNACRunner(model, device, max(batches), use_graphs=True, dtype=dtype, use_fused=False)
    results: dict = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "fused": graphs.fused is not None,
        "capture_s": time.perf_counter() - start,
        "decode": [],
    }
    eager = SNACRunner(model, device, max(batches), use_graphs=False, dtype=dtype)
    windows_per_stream = 24000 / 2048
    for b in batches:
        graph_s = time_decodes(graphs, b, device, args.repeats)
        module_s = time_decodes(module, b, device, args.repeats)
        eager_s = time_decodes(eager, b, device, max(3, args.repeats // 4))
        results["decode"].append(
            {
                "batch": b,
                "graph_ms": 1e3 * graph_s,
                "module_graph_ms": 1e3 * module_s,
                "eager_ms": 1e3 * eager_s,
                "windows_per_s": b / graph_s,
                "realtime_streams": b / graph_s / windows_per_stream,
            }
        )
    # the served audio against the module's in float32, on the same windows and noise
    rng = np.random.default_rng(0)
    b = max(batches)
    frames, seeds, counters = rng.integers(0, 4096, (b, WINDOW, 7)), list(range(b)), [WINDOW] * b
    full = SNACRunner(model, device, b, use_graphs=False, use_fused=False).decode(frames, seeds, counters).cpu()
    served = graphs.decode(frames, seeds, counters).float().cpu()
    results["rel_l2_vs_module_float32"] = float((served - full).norm() / full.norm())
    results["finite"] = bool(served.isfinite().all())
    print(f"audio vs the module in float32: relative L2 {results['rel_l2_vs_module_float32']:.2e}")
    print(f"{results['gpu']}, SNAC {args.dtype}, graphs captured in {results['capture_s']:.1f} s")
    names = ("windows", "graph ms", "module ms", "eager ms", "windows/s", "streams")
    print(" ".join(f"{n:>9}" for n in names))
    for d in results["decode"]:
        print(
            f"{d['batch']:>9} {d['graph_ms']:>9.2f} {d['module_graph_ms']:>9.2f} "
            f"{d['eager_ms']:>9.2f} {d['windows_per_s']:>10.0f} {d['realtime_streams']:>8.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
