"""How far the decode engine's non-upstream options move the output, on the full-size random model (any device).

    python -m light_tts.bench.flow_deviation --out deviation.json [--device cpu] [--seconds 20]

One stream (5-second prompt, fixed 1-second hops) through the engine with upstream's schedule, then with
--first_hop_tokens 15, and with --flow_context_window 2 and 4 seconds: relative L2 of the mel frames (all, and
past the first chunk) and of the audio, against upstream's schedule with full attention.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from light_tts.bench.engines.decode_parts import make_prompt, random_model_dir, rel_l2
from light_tts.decode.engine import DecodeEngine
from light_tts.decode.engine_setup import EngineLimits
from light_tts.token2wav import HopPolicy


def run(cfg, device: str, tokens: list[int], **limits) -> tuple[np.ndarray, np.ndarray]:
    dtype = torch.float32 if device == "cpu" else torch.float16
    engine = DecodeEngine(
        cfg,
        device,
        max_batch_size=4,
        hop_policy=HopPolicy("fixed"),
        dtype=dtype,
        use_cuda_graph=False,
        limits=EngineLimits(
            max_stream_tokens=len(tokens), num_pages=18, max_prompt_tokens=150, max_streams=4, max_prefixes=2, **limits
        ),
    )
    mels, audio = [], []
    original = engine._hift

    def record(jobs, outputs):
        mels.extend(job.mel[0].t().float().cpu().numpy() for job in jobs)
        return original(jobs, outputs)

    engine._hift = record
    engine.add_request("s", make_prompt(0), seed=3, stream=True, max_tokens=len(tokens))
    for i in range(0, len(tokens), 25):
        engine.push_tokens("s", tokens[i : i + 25], is_last=i + 25 >= len(tokens))
        while engine.has_work():
            audio += [o.audio for o in engine.step()]
    del engine._hift, engine  # the recording closure referenced the engine: free its pool before the next run
    gc.collect()
    return np.concatenate(mels), np.concatenate(audio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokens = np.random.default_rng(7).integers(0, 6561, 25 * args.seconds).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = random_model_dir(Path(tmp))
        base_mel, base_audio = run(cfg, args.device, tokens)
        out = {"device": args.device, "seconds": args.seconds}
        for name, limits in (
            ("first_hop_tokens=15", {"first_hop_tokens": 15}),
            ("flow_context_window=2", {"context_window_pages": 2}),
            ("flow_context_window=4", {"context_window_pages": 4}),
        ):
            mel, audio = run(cfg, args.device, tokens, **limits)
            past_first = 2 * 25  # frames after the first second of generated audio
            out[name] = {
                "mel": rel_l2(mel.reshape(-1), base_mel.reshape(-1)),
                "mel_after_first_second": rel_l2(mel[past_first:].reshape(-1), base_mel[past_first:].reshape(-1)),
                "audio": rel_l2(audio, base_audio),
            }
            print(name, json.dumps(out[name]), flush=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
