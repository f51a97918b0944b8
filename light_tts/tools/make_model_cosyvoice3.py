"""Writes a complete random-weight model directory in the released Fun-CosyVoice3-0.5B layout.

    python -m light_tts.tools.make_model OUT --family cosyvoice3 --size tiny|full [--seed N] [--llm_seed N]
        [--flow_seed N]

Every file the runtime reads is written (cosyvoice3.yaml in HyperPyYAML form with upstream's class tags, llm.pt,
flow.pt, hift.pt, campplus.onnx, speech_tokenizer_v3.onnx, CosyVoice-BlankEN/), so the normal loaders read it
unchanged. `tiny` has the CosyVoice3 fixture's dimensions (with a small text vocabulary that holds the tiny
tokenizer and CosyVoice3's 280 special tokens); `full` the released ones (506 M-parameter LM, 332 M flow, 21 M HiFT).
The weights are random: the audio is noise, only shapes and timing are real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from light_tts.model_dir import TOKENIZER_DIR
from light_tts.models.cosyvoice3.config import SPEECH_TOKENIZER, YAML_NAME
from light_tts.tools.model_files import QwenDims


@dataclass(frozen=True)
class Dims(QwenDims):
    lookahead_channels: int
    dit_dim: int
    dit_depth: int
    dit_heads: int
    dit_dim_head: int
    hift_channels: int
    f0_channels: int


SIZES = {
    "tiny": Dims(48, 2, 4, 2, 128, 1400, 128, 128, 2, 4, 32, 64, 64),
    "full": Dims(896, 24, 14, 2, 4864, 151936, 1024, 1024, 22, 16, 64, 512, 512),
}

YAML_FLOW = """\
{flow_head}    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: 80
        channels: {d.lookahead_channels}
        pre_lookahead_len: 3
{cfm}        estimator: !new:cosyvoice.flow.DiT.dit.DiT
            dim: {d.dit_dim}
            depth: {d.dit_depth}
            heads: {d.dit_heads}
            dim_head: {d.dit_dim_head}
            ff_mult: 2
            mel_dim: 80
            mu_dim: 80
            spk_dim: 80
            out_channels: 80
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

"""


def cosyvoice3_yaml(d: Dims, size: str, seed: int) -> str:
    """The CosyVoice2 sections with CosyVoice3's classes, its DiT flow, the causal HiFT's lookahead, fmax null
    (Nyquist) and tokenizer version cosyvoice3."""
    from light_tts.tools.model_files import family_yaml

    names = dict(
        family="cosyvoice3",
        llm_class="CosyVoice3LM",
        hift_class="CausalHiFTGenerator",
        hift_extra="    conv_pre_look_right: 4\n",
        f0_class="CausalConvRNNF0Predictor",
        fmax="null",
        tokenizer_version="    version: cosyvoice3\n",
    )
    return family_yaml(YAML_FLOW, names, dict(flow_class="CausalMaskedDiffWithDiT", flow_input_size=80), d, size, seed)


def make_model(
    out_dir: str | Path, size: str = "tiny", seed: int = 0, llm_seed: int | None = None, flow_seed: int | None = None
) -> Path:
    """Writes the directory and returns its path (as make_model.make_model does for CosyVoice2)."""
    from light_tts.models.cosyvoice3.config import load_model_config
    from light_tts.models.cosyvoice3.flow import DiTFlow
    from light_tts.models.cosyvoice3.hift import CausalHiFT
    from light_tts.models.speech_lm import SpeechLM
    from light_tts.tools.make_onnx import write_campplus_onnx, write_speech_tokenizer_onnx
    from light_tts.tools.make_tokenizer import write_tokenizer
    from light_tts.tools.model_files import _save, _seeded, qwen_config_json

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    d = SIZES[size]
    out = Path(out_dir)
    (out / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    (out / YAML_NAME).write_text(cosyvoice3_yaml(d, size, seed), encoding="utf-8")
    write_tokenizer(out / TOKENIZER_DIR, size=size, vocab_size=d.vocab, version="cosyvoice3")
    (out / TOKENIZER_DIR / "config.json").write_text(json.dumps(qwen_config_json(d), indent=2), encoding="utf-8")
    cfg = load_model_config(out)
    torch.manual_seed(seed)
    with torch.no_grad():
        llm = SpeechLM(cfg.llm)  # drawn from `seed` in any case, so the later weights do not depend on llm_seed
        _save(_seeded(llm_seed, lambda: SpeechLM(cfg.llm)) if llm_seed is not None else llm, out / "llm.pt")
        del llm
        flow = DiTFlow(cfg.flow)
        _save(_seeded(flow_seed, lambda: DiTFlow(cfg.flow)) if flow_seed is not None else flow, out / "flow.pt")
        del flow
        hift = CausalHiFT(cfg.hift, cfg.flow)
        if flow_seed is not None:
            hift = _seeded(flow_seed + 1, lambda: CausalHiFT(cfg.hift, cfg.flow))
        _save(hift, out / "hift.pt")
    write_speech_tokenizer_onnx(out / SPEECH_TOKENIZER, size=size, seed=seed)
    write_campplus_onnx(out / "campplus.onnx", size=size, seed=seed)
    return out
