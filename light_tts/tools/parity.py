"""Checks our model code against upstream outputs stored beside a model in the fixture layout.

    python -m light_tts.tools.parity DIR

DIR is laid out like shared/fixtures/cosyvoice2-tiny (or cosyvoice3-tiny): the family's yaml,
CosyVoice-BlankEN/config.json, llm.pt, flow.pt, hift.pt and the *_io.pt files of inputs and upstream outputs.
The directory's family supplies its checks (CosyVoice2's are here, CosyVoice3's in parity_cosyvoice3.py) and its
config; dimensions come from DIR's own config. Prints one row per check (error, tolerance, verdict) and exits
non-zero if any check fails.

The LLM decode steps of llm_io.pt were produced by upstream running under transformers 5, where its length-1
decode attention mask lets every decoded token attend only to the sos position; under the transformers version
upstream pins (and in our model) it attends to the whole prefix. The prefill step is unaffected and checked as
is; the decode steps are checked with that mask reproduced, which tests the same weights and arithmetic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from light_tts.frontend.prompt_mel import prompt_mel
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.models.cosyvoice2.hift import HiFT
from light_tts.models.qwen2 import KVCache, rope_cos_sin
from light_tts.models.speech_lm import SpeechLM
from light_tts.sampling import GreedySampler
from light_tts.tools.parity_common import AUDIO_TOL, LOGPROB_TOL, MEL_TOL, Check, load_io, rel_l2  # noqa: F401


def _decode_step_sos_only(lm: SpeechLM, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One decode step whose query sees only key 0 (sos), as upstream under transformers 5 (module docstring)."""
    body = lm.llm.model.model
    positions = torch.tensor([cache.seq_len])
    cos, sin = rope_cos_sin(positions, body.inv_freq)
    mask = torch.zeros(1, cache.seq_len + 1, dtype=torch.bool)
    mask[0, 0] = True
    x = embeds
    for layer in body.layers:
        x = layer(x, cos, sin, mask, cache)
    return lm.step_logprobs(body.norm(x)[0, -1])


def llm_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    io = load_io(model_dir, "llm_io.pt")
    lm = SpeechLM.from_checkpoint(cfg.llm, model_dir / "llm.pt")
    ref_logprobs, ref_tokens = io["step_logprobs"], io["greedy_tokens"].tolist()
    min_len, max_len = int(io["min_len"]), int(io["max_len"])
    cache = lm.new_cache()
    logprobs = lm.forward_step(lm.build_prefill_embeds(io["text"], io["prompt_text"], io["prompt_speech_token"]), cache)
    steps, tokens, sampler = [logprobs], [], GreedySampler()
    for step in range(max_len):
        token = lm.sample_next(sampler, logprobs, tokens, step < min_len)
        if token in lm.cfg.stop_token_ids:
            break
        tokens.append(token)
        logprobs = _decode_step_sos_only(lm, lm.embed_speech(torch.tensor([token])), cache)
        steps.append(logprobs)
    n = ref_logprobs.shape[0]
    same = sum(a == b for a, b in zip(tokens, ref_tokens))
    return [
        Check("llm prefill log-probs (step 0)", rel_l2(steps[0], ref_logprobs[0]), LOGPROB_TOL),
        Check(
            f"llm decode log-probs (steps 1-{n - 1})", rel_l2(torch.stack(steps[1:n]), ref_logprobs[1:]), LOGPROB_TOL
        ),
        Check(
            "llm greedy tokens",
            0.0 if tokens == ref_tokens else 1.0,
            0.0,
            f"{same}/{len(ref_tokens)} equal, lengths {len(tokens)} vs {len(ref_tokens)}",
        ),
    ]


def flow_hift_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    io = load_io(model_dir, "flow_hift_io.pt")
    flow = Flow.from_checkpoint(cfg.flow, model_dir / "flow.pt").eval()
    hift = HiFT.from_checkpoint(cfg.hift, model_dir / "hift.pt").eval()
    args = (io["prompt_token"], io["prompt_feat"], io["embedding"])
    noise_head = io["cfm_rand_noise_head"]
    first = io["token"][:, : int(io["first_chunk_tokens"])]
    gen = torch.Generator().manual_seed(int(io["hift_seed"]))
    speech, source = hift.inference(io["hift_mel_in"], None, generator=gen)
    return [
        Check(
            "flow non-streaming mel",
            rel_l2(flow.inference(io["token"], *args, streaming=False, finalize=True), io["mel_nonstream"]),
            MEL_TOL,
        ),
        Check(
            "flow first streaming chunk mel",
            rel_l2(flow.inference(first, *args, streaming=True, finalize=False), io["mel_stream_chunk0"]),
            MEL_TOL,
        ),
        Check("cfm fixed noise head", rel_l2(flow.decoder.rand_noise[..., : noise_head.shape[-1]], noise_head), 0.0),
        Check("hift audio", rel_l2(speech, io["hift_speech"]), AUDIO_TOL),
        Check("hift source", rel_l2(source, io["hift_source"]), AUDIO_TOL),
    ]


def stream_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    """The upstream streaming scheduler's audio chunks, through our token2wav session (exact final chunk)."""
    from light_tts.frontend.prompt import Prompt
    from light_tts.token2wav import HopPolicy, Token2Wav

    io, ref = load_io(model_dir, "flow_hift_io.pt"), load_io(model_dir, "stream_io.pt")
    t2w = Token2Wav(cfg)
    prompt = Prompt(
        text_tokens=torch.zeros(0, dtype=torch.int32).numpy(),
        speech_tokens=io["prompt_token"][0].numpy(),
        embedding=io["embedding"][0].numpy(),
        mel=io["prompt_feat"][0].numpy(),
    )
    session = t2w.session(
        prompt, seed=int(ref["rng_seed_before_stream"]), hop_policy=HopPolicy("growing"), exact_final=True
    )
    chunks = session.feed(io["token"][0].tolist()) + [session.finish()]
    checks = [
        Check(
            "stream chunk count",
            float(len(chunks) != len(ref["chunks"])),
            0.0,
            f"{len(chunks)} vs {len(ref['chunks'])}",
        )
    ]
    for i, (ours, theirs) in enumerate(zip(chunks, ref["chunks"])):
        checks.append(
            Check(
                f"stream chunk {i} audio",
                rel_l2(torch.from_numpy(ours), theirs),
                AUDIO_TOL,
                f"{len(ours)} vs {theirs.shape[-1]} samples",
            )
        )
    return checks


def feat_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    io = load_io(model_dir, "feat_io.pt")
    return [Check("prompt mel (24 kHz)", rel_l2(prompt_mel(io["wav24k"], cfg.feat), io["prompt_mel"]), MEL_TOL)]


ALL_CHECKS: tuple[Callable[[ModelConfig, Path], list[Check]], ...] = (
    llm_checks,
    flow_hift_checks,
    stream_checks,
    feat_checks,
)


@torch.inference_mode()
def run_checks(model_dir: str | Path) -> list[Check]:
    from light_tts.families import family_of

    model_dir = Path(model_dir)
    family = family_of(model_dir)
    cfg = family.load_model_config(model_dir)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return [check for group in checks_of(family.name) for check in group(cfg, model_dir)]


def checks_of(family: str) -> tuple[Callable[[ModelConfig, Path], list[Check]], ...]:
    """The parity checks of a family's fixtures."""
    from light_tts.tools.parity_cosyvoice3 import ALL_CHECKS as COSYVOICE3_CHECKS

    return {"cosyvoice2": ALL_CHECKS, "cosyvoice3": COSYVOICE3_CHECKS}[family]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)
    checks = run_checks(args.model_dir)
    width = max(len(c.name) for c in checks)
    print(f"{'check':<{width}}  {'rel. error':>10}  {'tolerance':>9}  result")
    for c in checks:
        print(f"{c.name:<{width}}  {c.error:>10.2e}  {c.tolerance:>9.0e}  {'PASS' if c.passed else 'FAIL'}  {c.detail}")
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
