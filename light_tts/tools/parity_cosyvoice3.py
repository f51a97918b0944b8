"""CosyVoice3's parity checks (run by `python -m light_tts.tools.parity DIR` on a cosyvoice3 fixture directory):
our modules against upstream's outputs in shared/fixtures/cosyvoice3-tiny (see its README for every file).

The fixture's LLM decode steps were made with a full-length decode mask (its P2), so they are checked against our
normal decoding. Audio is checked on the fixture's own mel inputs (the vocoder amplifies mel differences through
f0 and the accumulated phase), end-to-end token-to-audio only as the streamed chunk structure and mel.
"""

from __future__ import annotations

from pathlib import Path

import torch

from light_tts.families.base import filtered
from light_tts.frontend.features import speaker_features, whisper_log_mel
from light_tts.frontend.prompt import Prompt
from light_tts.frontend.prompt_mel import prompt_mel
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice3.flow import DiTFlow
from light_tts.models.cosyvoice3.hift import CausalHiFT
from light_tts.models.cosyvoice3.hift.streaming import CausalVocoder, new_stream, stream_chunk
from light_tts.models.speech_lm import SpeechLM
from light_tts.sampling import GreedySampler
from light_tts.tools.parity_common import AUDIO_TOL, LOGPROB_TOL, MEL_TOL, Check, load_io, rel_l2


def _greedy(lm: SpeechLM, text, prompt_text, prompt_speech, min_len: int, max_len: int, num_steps: int):
    """Upstream's inference loop with argmax: (decoded tokens, the id it stopped on, log-probs of the first
    num_steps steps before masking)."""
    cache = lm.new_cache()
    logprobs = lm.forward_step(lm.build_prefill_embeds(text, prompt_text, prompt_speech), cache)
    tokens, steps, stop, sampler = [], [], None, GreedySampler()
    for step in range(max_len):
        if len(steps) < num_steps:
            steps.append(logprobs)
        token = lm.sample_next(sampler, logprobs, tokens, step < min_len)
        if token in lm.cfg.stop_token_ids:
            stop = token
            break
        tokens.append(token)
        logprobs = lm.forward_step(lm.embed_speech(torch.tensor([token])), cache)
    return tokens, stop, torch.stack(steps)


def llm_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    from light_tts.families import family_named

    io = load_io(model_dir, "llm_io.pt")
    lm = SpeechLM.from_checkpoint(cfg.llm, model_dir / "llm.pt")
    checks = []
    no_speech = io["prompt_speech_token"][:, :0]
    for name, prompt_text, speech in (
        ("zero-shot", io["prompt_text"], io["prompt_speech_token"]),
        ("instruct", io["instruct_prompt_text"], no_speech),
    ):
        key = "" if name == "zero-shot" else "instruct_"
        ref_steps, ref_tokens = io[f"{key}step_logprobs"], io[f"{key}greedy_tokens"].tolist()
        tokens, stop, steps = _greedy(
            lm, io["text"], prompt_text, speech, int(io[f"{key}min_len"]), int(io[f"{key}max_len"]), ref_steps.shape[0]
        )
        same = sum(a == b for a, b in zip(tokens, ref_tokens))
        checks += [
            Check(f"llm {name} prefill log-probs (step 0)", rel_l2(steps[0], ref_steps[0]), LOGPROB_TOL),
            Check(
                f"llm {name} decode log-probs (steps 1-{len(ref_steps) - 1})",
                rel_l2(steps[1:], ref_steps[1:]),
                LOGPROB_TOL,
            ),
            Check(
                f"llm {name} greedy tokens and stop",
                float(tokens != ref_tokens or stop != io[f"{key}stop"]),
                0.0,
                f"{same}/{len(ref_tokens)} equal, lengths {len(tokens)} vs {len(ref_tokens)}, stop {stop} vs "
                f"{io[f'{key}stop']}",
            ),
        ]
        if name == "zero-shot":
            kept = list(filtered(tokens, family_named("cosyvoice3").speech_token_filter()))
            checks.append(
                Check(
                    "silent-token filter (tokens to the flow)",
                    float(kept != io["flow_tokens_after_silence_filter"].tolist()),
                    0.0,
                )
            )
    return checks


def flow_hift_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    io = load_io(model_dir, "flow_hift_io.pt")
    flow = DiTFlow.from_checkpoint(cfg.flow, model_dir / "flow.pt")
    hift = CausalHiFT.from_checkpoint(cfg.hift, cfg.flow, model_dir / "hift.pt")
    args = (io["prompt_token"], io["prompt_feat"], io["embedding"])
    first = io["token"][:, : int(io["first_chunk_tokens"])]
    table = io["hift_sine_noise_head"]
    speech, source = hift.inference(io["hift_mel_in"], finalize=True)
    partial, _ = hift.inference(io["hift_mel_in"], finalize=False)
    return [
        Check(
            "flow non-streaming mel",
            rel_l2(flow.inference(io["token"], *args, streaming=False, finalize=True), io["mel_nonstream"]),
            MEL_TOL,
        ),
        Check(
            "flow streaming mel (block-causal, all tokens)",
            rel_l2(flow.inference(io["token"], *args, streaming=True, finalize=True), io["mel_stream_full"]),
            MEL_TOL,
        ),
        Check(
            "flow first streaming chunk mel",
            rel_l2(flow.inference(first, *args, streaming=True, finalize=False), io["mel_stream_chunk0"]),
            MEL_TOL,
        ),
        Check(
            "cfm fixed noise head",
            rel_l2(flow.decoder.rand_noise[..., : io["cfm_rand_noise_head"].shape[-1]], io["cfm_rand_noise_head"]),
            0.0,
        ),
        Check("hift noise table head", rel_l2(hift.noise.grow(table.shape[1])[None], table), 0.0),
        Check("hift audio (finalize)", rel_l2(speech, io["hift_speech"]), AUDIO_TOL),
        Check("hift source", rel_l2(source, io["hift_source"]), AUDIO_TOL),
        Check(
            "hift audio (not finalized: 8 frames held back)",
            rel_l2(partial, io["hift_speech_partial"]),
            AUDIO_TOL,
            f"{partial.shape[1]} vs {io['hift_speech_partial'].shape[1]} samples",
        ),
    ]


def stream_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    """Upstream's streaming scheduler: (1) our windowed HiFT stream on the fixture's stream_mel, chunk by chunk;
    (2) a token2wav session (upstream's hops and exact final chunk) on the fixture's tokens: its accumulated mel
    and its chunk sizes."""
    from light_tts.token2wav import HopPolicy, Token2Wav

    io, ref = load_io(model_dir, "flow_hift_io.pt"), load_io(model_dir, "stream_io.pt")
    hift = CausalHiFT.from_checkpoint(cfg.hift, cfg.flow, model_dir / "hift.pt")
    ratio = int(ref["token_mel_ratio"])
    frames = [ratio * h for h in ref["hops"]]
    frames.append(ref["stream_mel"].shape[2] - sum(frames))
    stream, start, checks = new_stream(hift), 0, []
    for i, (n, theirs) in enumerate(zip(frames, ref["chunks"])):
        ours = stream_chunk(hift, stream, ref["stream_mel"][:, :, start : start + n], finalize=i == len(frames) - 1)
        start += n
        checks.append(
            Check(
                f"hift stream chunk {i} audio (fixture mel)",
                rel_l2(ours, theirs),
                AUDIO_TOL,
                f"{ours.shape[1]} vs {theirs.shape[-1]} samples",
            )
        )
    flow = DiTFlow.from_checkpoint(cfg.flow, model_dir / "flow.pt")
    t2w = Token2Wav(cfg, "cpu", flow=flow, vocoder=CausalVocoder(hift))
    prompt = Prompt(
        text_tokens=torch.zeros(0, dtype=torch.int32).numpy(),
        speech_tokens=io["prompt_token"][0].numpy(),
        embedding=io["embedding"][0].numpy(),
        mel=io["prompt_feat"][0].numpy(),
    )
    mels = []
    t2w.vocoder = _Recording(t2w.vocoder, mels)
    session = t2w.session(prompt, seed=0, hop_policy=HopPolicy("growing"), exact_final=True)
    chunks = session.feed(io["token"][0].tolist()) + [session.finish()]
    sizes, ref_sizes = [len(c) for c in chunks], list(ref["chunk_samples"])
    return checks + [
        Check("stream chunk count and sizes", float(sizes != ref_sizes), 0.0, f"{sizes} vs {ref_sizes}"),
        Check("stream accumulated mel", rel_l2(torch.cat(mels, dim=2), ref["stream_mel"]), MEL_TOL),
    ]


class _Recording:
    """A vocoder that records the mel chunks it is given (for the stream mel check)."""

    def __init__(self, vocoder, mels: list):
        self.vocoder, self.mels = vocoder, mels

    def new_stream(self, seed, device):
        return self.vocoder.new_stream(seed, device)

    def chunk(self, stream, mel, finalize):
        self.mels.append(mel.clone())
        return self.vocoder.chunk(stream, mel, finalize)


def feat_checks(cfg: ModelConfig, model_dir: Path) -> list[Check]:
    io = load_io(model_dir, "feat_io.pt")
    wav16k = io["wav16k"][0].numpy()
    return [
        Check(
            "prompt mel (24 kHz, fmax 12 kHz)", rel_l2(prompt_mel(io["wav24k"], cfg.feat), io["prompt_mel"]), MEL_TOL
        ),
        Check(
            "speech tokenizer input (Whisper log-mel, 128 bins)",
            rel_l2(whisper_log_mel(wav16k, n_mels=128), io["whisper_logmel128"]),
            MEL_TOL,
        ),
        Check(
            "speaker model input (Kaldi fbank - mean)",
            rel_l2(torch.from_numpy(speaker_features(wav16k)), io["campplus_fbank"]),
            MEL_TOL,
        ),
    ]


ALL_CHECKS = (llm_checks, flow_hift_checks, stream_checks, feat_checks)
