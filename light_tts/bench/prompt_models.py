"""A new voice's prompt models, ONNX Runtime against the torch runner (frontend/onnx_torch.py): time per prompt
and parity, on a model directory's own files.

    python -m light_tts.bench.prompt_models --model_dir DIR [--device cuda] [--seconds 5] [--repeat 20] [--out J]

Both backends get the same features of a synthetic prompt (the benchmark's 5-s voice); the speech tokens must be
identical and the speaker embedding within --max_rel_l2 (exit code 1 otherwise). Times are medians of --repeat
calls after one untimed call, the device synced after each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from light_tts.bench.serving.local_server import PROMPT_RATE, prompt_pcm
from light_tts.frontend.audio import resample
from light_tts.frontend.features import SAMPLE_RATE, speaker_features, whisper_log_mel
from light_tts.frontend.onnx_models import CampPlusONNX, SpeechTokenizerONNX


def timed(fn, inputs, repeat: int, device: str) -> tuple[object, float]:
    out = fn(inputs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(inputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--max_rel_l2", type=float, default=1e-4)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    wav = resample(prompt_pcm(args.seconds).astype(np.float32) / 32768, PROMPT_RATE, SAMPLE_RATE)
    mel, fbank = whisper_log_mel(wav).numpy(), speaker_features(wav)
    result = {"device": args.device, "prompt_seconds": args.seconds}
    outputs = {}
    for name, device in (("onnxruntime", None), ("torch", args.device)):
        tokenizer = SpeechTokenizerONNX(f"{args.model_dir}/speech_tokenizer_v2.onnx", device)
        campplus = CampPlusONNX(f"{args.model_dir}/campplus.onnx", device)
        tokens, t_tok = timed(tokenizer, mel, args.repeat, args.device)
        embedding, t_spk = timed(campplus, fbank, args.repeat, args.device)
        outputs[name] = (tokens, embedding)
        result[name] = {
            "backends": [tokenizer.runner.backend, campplus.runner.backend],
            "speech_tokenizer_ms": 1000 * t_tok,
            "speaker_model_ms": 1000 * t_spk,
        }
    (tok_a, emb_a), (tok_b, emb_b) = outputs["onnxruntime"], outputs["torch"]
    rel = float(np.linalg.norm(emb_b - emb_a) / np.linalg.norm(emb_a))
    result.update(tokens_identical=bool(np.array_equal(tok_a, tok_b)), embedding_rel_l2=rel, num_tokens=int(len(tok_a)))
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["tokens_identical"] and rel <= args.max_rel_l2 else 1


if __name__ == "__main__":
    sys.exit(main())
