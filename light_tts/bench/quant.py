"""Accuracy, speed and memory of the LLM quantization modes (--quantization, --kv_cache_dtype) against the
unquantized engine in the same dtype, on the full-size random model (or --model_dir).

python -m light_tts.bench.quant --out quant.json [--model_dir DIR | --shape llama3b] [--device cuda]
    [--dtype bfloat16] [--modes none/auto,fp8/auto,...] [--steps 1000] [--batches 1,256] [--pipeline_tokens 250]
On the CPU at a tiny size (the accuracy columns only, float32):
python -m light_tts.bench.quant --out q.json --device cpu --dtype float32 --model_dir <tiny model> --batches ""

Per mode:
- log-prob KL(baseline || mode), mean and max over `steps` decode steps of one request, every mode fed the tokens
  the baseline decoded greedily (teacher forcing: each step sees the same context), and top-1 agreement: the
  share of those steps whose argmax is the baseline's;
- CosyVoice2: the whole pipeline: pipeline_tokens speech tokens sampled (RAS, one seed: the engine's draws are
  counter-based, so only changed logits change a draw), then flow -> mel -> HiFT; the share of tokens equal to
  the baseline's, the first token that differs, and the relative L2 of the mel and the audio against the
  baseline's (a sampled token that differs changes what follows, so these are whole-utterance changes);
- memory: weight bytes and KV bytes per token; speed (CUDA): the decode step at each of --batches with CUDA
  graphs (engine.step() and the graph replay alone, as light_tts.bench.llm measures them).
--model_dir takes any family's directory (bench/engines/llm_models.py); the pipeline columns are CosyVoice2's only.
--shape llama3b: Orpheus (the Llama family: Llama-3.2-3B's body, 28 layers, 3072 wide, GQA 24/8 heads of 128,
MLP 8192, llama3 rope, the tied 156,940-row head, nucleus sampling) with random full-size weights, written once
to a temporary directory by make_model --family orpheus --size full (6.6 GB; about a minute).
Random weights give flat, low-margin distributions, so top-1 flips are likelier than in a trained model: the
table bounds what quantization changes, docs/quantization.md says how to read it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from light_tts.bench import llm as bench_llm
from light_tts.bench.engines.decode_parts import make_prompt, random_model_dir, rel_l2
from light_tts.bench.engines.llm_models import CosyVoiceBench, OrpheusBench, bench_model
from light_tts.llm.config import EngineConfig
from light_tts.llm.engine import LLMEngine
from light_tts.llm.model import KVCache
from light_tts.llm.request import LLMRequest
from light_tts.token2wav import Token2Wav

DEFAULT_MODES = "none/auto,fp8/auto,int8/auto,none/fp8,none/int8,fp8/fp8,int8/int8"
PROMPT_LEN = 300


def parse_modes(text: str) -> list[tuple[str, str]]:
    """ "none/auto,fp8/fp8" -> [("none", "auto"), ("fp8", "fp8")]; the baseline none/auto always comes first."""
    modes = [tuple(m.split("/")) for m in text.split(",") if m]
    return [("none", "auto")] + [m for m in modes if m != ("none", "auto")]


def make_engine(model, device: str, dtype: str, mode: tuple[str, str], max_batch: int) -> LLMEngine:
    """An engine of the benchmark model (llm_models.py: its spec and released state dict) in one mode."""
    engine_cfg = EngineConfig(
        data_type=dtype,
        quantization=mode[0],
        kv_cache_dtype=mode[1],
        running_max_req_size=max_batch,
        graph_max_batch_size=max_batch,
        max_req_total_len=2048,
        max_total_token_num=max_batch * 400 + 4096,
    )
    return LLMEngine(model.spec, engine_cfg, device, model.state_dict)


def load_model(args, tmp: Path):
    """The family adapter of --model_dir, else the random full-size model of --shape written under tmp."""
    if args.model_dir:
        return bench_model(args.model_dir, args.device)
    if args.shape == "llama3b":
        from light_tts.tools.make_orpheus import make_orpheus

        return OrpheusBench(make_orpheus(tmp / "orpheus", "full", seed=0), args.device)
    model = CosyVoiceBench(None, args.device)  # the released dimensions, random LLM weights (seed 0)
    model.cfg = random_model_dir(tmp)  # the same dimensions, with random flow and HiFT for the pipeline columns
    return model


@torch.inference_mode()
def forced_logprobs(engine: LLMEngine, req: LLMRequest, tokens: list[int] | None) -> tuple[list[int], torch.Tensor]:
    """Run req alone; with tokens given, feed them instead of the sampled ids (teacher forcing). Returns the ids it
    decoded (or was fed) and the log-probs of every step [steps, V] float64 on the CPU."""
    engine.add_request(req)
    ids, logprobs = [], []
    while engine.has_unfinished():
        batch = engine.scheduler.schedule()
        sampled = engine.runner.run(batch)
        logprobs.append(engine.runner.last_logits[0].double().log_softmax(dim=-1).cpu())
        fed = sampled if tokens is None else [tokens[len(ids)]]
        ids += fed
        engine.scheduler.postprocess(batch, fed)
    return ids, torch.stack(logprobs)


def accuracy(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> dict:
    kl = (ref_logprobs.exp() * (ref_logprobs - logprobs)).sum(dim=-1)  # per step
    agree = (ref_logprobs.argmax(dim=-1) == logprobs.argmax(dim=-1)).double().mean()
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": float(agree),
        "max_abs_logprob": float((ref_logprobs - logprobs).abs().max()),
    }


@torch.inference_mode()
def pipeline_output(
    engine: LLMEngine, t2w: Token2Wav, prompt, num_tokens: int, gen: torch.Generator
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Sampled speech tokens of one request (fixed length), then its mel [80, frames] and audio."""
    text = torch.randint(0, bench_llm.MODEL.num_text_ids, (num_tokens // 10,), generator=gen).tolist()
    req = LLMRequest(
        "pipeline", text, [], prompt.speech_tokens.tolist(), seed=7, min_len=num_tokens, max_len=num_tokens
    )
    tokens, _ = forced_logprobs(engine, req, None)
    p_tok, p_mel, emb = (
        torch.as_tensor(x, device=t2w.device)[None] for x in (prompt.speech_tokens, prompt.mel, prompt.embedding)
    )
    token = torch.tensor([tokens], dtype=torch.int32, device=t2w.device)
    mel = t2w.flow.inference(token, p_tok, p_mel, emb, streaming=False, finalize=True)
    audio = t2w.offline(tokens, prompt, seed=3)
    return tokens, mel[0].float().cpu().numpy(), audio


def memory(engine: LLMEngine) -> dict:
    model = engine.runner.model
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    runner = engine.runner
    return {
        "weights_mib": weight_bytes / 2**20,
        "kv_bytes_per_token": KVCache.bytes_per_slot(runner.body, runner.dtype, runner.kv_format),
    }


def bench_mode(mode, engine, ref, args, t2w, gen_seed: int) -> dict:
    gen = torch.Generator().manual_seed(gen_seed)  # every mode sees the same requests
    req = bench_llm.make_request("acc", PROMPT_LEN, args.steps, gen, greedy=True)
    tokens, logprobs = forced_logprobs(engine, req, ref.get("tokens"))
    result = {"quantization": mode[0], "kv_cache_dtype": mode[1], **memory(engine)}
    if "tokens" not in ref:  # the baseline
        ref.update(tokens=tokens, logprobs=logprobs)
    result.update(accuracy(ref["logprobs"], logprobs))
    if t2w is not None:
        tokens, mel, audio = pipeline_output(engine, t2w, make_prompt(0), args.pipeline_tokens, gen)
        ref.setdefault("pipeline", (tokens, mel, audio))
        ref_tokens, ref_mel, ref_audio = ref["pipeline"]
        is_equal = np.array(tokens) == np.array(ref_tokens)
        result.update(
            pipeline_token_agreement=float(is_equal.mean()),
            pipeline_first_difference=int(np.argmin(is_equal)) if not is_equal.all() else len(tokens),
            mel_rel_l2=rel_l2(mel.T, ref_mel.T),
            audio_rel_l2=rel_l2(audio, ref_audio),
        )
    if args.device == "cuda":
        result["decode"] = [bench_llm.bench_decode(engine, b, PROMPT_LEN, gen) for b in args.batch_list]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model_dir", type=Path, help="any family's; default: full-size random weights")
    parser.add_argument(
        "--shape",
        default="cosyvoice2",
        choices=("cosyvoice2", "llama3b"),
        help="of the random model (llama3b: Orpheus, no pipeline columns)",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--modes", default=DEFAULT_MODES, help="quantization/kv_cache_dtype pairs")
    parser.add_argument("--steps", type=int, default=1000, help="decode steps compared (top-1, KL)")
    parser.add_argument("--batches", default="1,256", help="decode batches timed (CUDA only; '' for none)")
    parser.add_argument(
        "--pipeline_tokens", type=int, default=250, help="speech tokens through flow and HiFT (0: skip the pipeline)"
    )
    args = parser.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",") if b]
    bench_llm.DEVICE = args.device
    with tempfile.TemporaryDirectory() as tmp:
        model = bench_llm.MODEL = load_model(args, Path(tmp))
        is_cosyvoice = isinstance(model, CosyVoiceBench)
        t2w = Token2Wav(model.cfg, args.device) if args.pipeline_tokens and is_cosyvoice else None
        max_batch = max(args.batch_list + [4])
        results: dict = {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "dtype": args.dtype,
            "family": "cosyvoice2" if is_cosyvoice else "orpheus",
            "shape": None if args.model_dir else args.shape,
            "steps": args.steps,
            "modes": [],
        }
        ref: dict = {}
        for mode in parse_modes(args.modes):
            engine = make_engine(model, args.device, args.dtype, mode, max_batch)
            results["modes"].append(bench_mode(mode, engine, ref, args, t2w, gen_seed=1))
            print_row(results["modes"][-1], flush=True)
            del engine
            if args.device == "cuda":
                torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def print_row(r: dict, flush: bool = False) -> None:
    line = (
        f"{r['quantization']:>5}/{r['kv_cache_dtype']:<4} KL mean {r['kl_mean']:.2e} max {r['kl_max']:.2e}  "
        f"top-1 {r['top1_agreement']:.3f}  weights {r['weights_mib']:.1f} MiB  KV {r['kv_bytes_per_token']} "
        "B/token"
    )
    if "mel_rel_l2" in r:
        line += (
            f"  pipeline: tokens {r['pipeline_token_agreement']:.3f} (first change at "
            f"{r['pipeline_first_difference']}) mel {r['mel_rel_l2']:.3f} audio {r['audio_rel_l2']:.3f}"
        )
    for d in r.get("decode", []):
        line += f"  batch {d['batch']}: {d['graph_ms']:.3f} ms (replay {d.get('replay_ms', float('nan')):.3f})"
    print(line, flush=flush)


if __name__ == "__main__":
    main()
