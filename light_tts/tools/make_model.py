"""Writes a complete random-weight model directory in the released layout of a family (CosyVoice2-0.5B here;
CosyVoice3 in make_model_cosyvoice3.py).

    python -m light_tts.tools.make_model OUT [--family cosyvoice2|cosyvoice3] --size tiny|full [--seed N]
        [--llm_seed N] [--flow_seed N]
    python -m light_tts.tools.make_model OUT --family orpheus --size tiny|full [--seed N] [--llm_seed N]

`tiny` runs fast on a CPU (tests, the server's default start); `full` has the released dimensions for GPU
benchmarks. Every file a released directory has is written (cosyvoice2.yaml in HyperPyYAML form, llm.pt, flow.pt,
hift.pt, campplus.onnx, speech_tokenizer_v2.onnx, flow.decoder.estimator.fp32.onnx, CosyVoice-BlankEN/), so the
normal loaders read it unchanged. `--family orpheus` writes an Orpheus-3B + SNAC directory instead
(tools/make_orpheus.py).
The weights are random: the audio is noise, only shapes and timing are real. `--llm_seed` draws only the LLM's
weights from another seed (a "style" of the same model: same flow, HiFT and frontend files), `--flow_seed` only the
flow's and HiFT's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from light_tts.model_dir import TOKENIZER_DIR, YAML_NAME
from light_tts.tools.model_files import QwenDims, _save, _seeded, family_yaml, qwen_config_json  # noqa: F401

ESTIMATOR_ONNX = "flow.decoder.estimator.fp32.onnx"


@dataclass(frozen=True)
class Dims(QwenDims):
    enc_units: int
    enc_blocks: int
    est_channels: int
    est_head_dim: int
    est_blocks: int
    est_mid_blocks: int
    est_heads: int
    hift_channels: int
    f0_channels: int


SIZES = {
    # the parity fixture's dimensions (known to match upstream), with a text vocabulary for our tiny tokenizer
    "tiny": Dims(64, 2, 4, 2, 160, 1200, 256, 1, 64, 32, 1, 2, 2, 64, 64),
    # the released CosyVoice2-0.5B dimensions
    "full": Dims(896, 24, 14, 2, 4864, 151936, 2048, 6, 256, 64, 4, 12, 8, 512, 512),
}

YAML_FLOW = """\
{flow_head}    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: 8
        linear_units: {d.enc_units}
        num_blocks: {d.enc_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
{cfm}        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{d.est_channels}]
            dropout: 0.0
            attention_head_dim: {d.est_head_dim}
            n_blocks: {d.est_blocks}
            num_mid_blocks: {d.est_mid_blocks}
            num_heads: {d.est_heads}
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

"""


def cosyvoice2_yaml(d: Dims, size: str, seed: int) -> str:
    names = dict(
        family="cosyvoice2",
        llm_class="Qwen2LM",
        hift_class="HiFTGenerator",
        hift_extra="",
        f0_class="ConvRNNF0Predictor",
        fmax=8000,
        tokenizer_version="",
    )
    return family_yaml(
        YAML_FLOW, names, dict(flow_class="CausalMaskedDiffWithXvec", flow_input_size=512), d, size, seed
    )


def make_model(
    out_dir: str | Path, size: str = "tiny", seed: int = 0, llm_seed: int | None = None, flow_seed: int | None = None
) -> Path:
    """Writes the directory and returns its path; an existing directory is overwritten file by file. With
    llm_seed (flow_seed) the LLM (the flow and HiFT) take their weights from that seed, every other file is as
    `seed` makes it."""
    from light_tts.decode.flow.estimator_onnx import export_estimator_onnx
    from light_tts.model_dir import load_model_config
    from light_tts.models.cosyvoice2.flow import Flow
    from light_tts.models.cosyvoice2.hift import HiFT
    from light_tts.models.speech_lm import SpeechLM
    from light_tts.tools.make_onnx import write_campplus_onnx, write_speech_tokenizer_onnx
    from light_tts.tools.make_tokenizer import write_tokenizer

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    d = SIZES[size]
    out = Path(out_dir)
    (out / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    (out / YAML_NAME).write_text(cosyvoice2_yaml(d, size, seed), encoding="utf-8")
    write_tokenizer(out / TOKENIZER_DIR, size=size, vocab_size=d.vocab)
    (out / TOKENIZER_DIR / "config.json").write_text(json.dumps(qwen_config_json(d), indent=2), encoding="utf-8")
    cfg = load_model_config(out)
    torch.manual_seed(seed)
    with torch.no_grad():
        llm = SpeechLM(cfg.llm)  # drawn from `seed` in any case, so the later weights do not depend on llm_seed
        _save(_seeded(llm_seed, lambda: SpeechLM(cfg.llm)) if llm_seed is not None else llm, out / "llm.pt")
        del llm
        flow = Flow(cfg.flow)
        if flow_seed is not None:
            flow = _seeded(flow_seed, lambda: Flow(cfg.flow))
        _save(flow, out / "flow.pt")
        export_estimator_onnx(flow.decoder.estimator, out / ESTIMATOR_ONNX)  # the usual TensorRT source
        del flow
        hift = HiFT(cfg.hift)
        _save(_seeded(flow_seed + 1, lambda: HiFT(cfg.hift)) if flow_seed is not None else hift, out / "hift.pt")
    write_speech_tokenizer_onnx(out / "speech_tokenizer_v2.onnx", size=size, seed=seed)
    write_campplus_onnx(out / "campplus.onnx", size=size, seed=seed)
    return out


def writer_of(family: str):
    """The random-model writer of a family (make_model(out_dir, size, seed, llm_seed, flow_seed) -> Path)."""
    from light_tts.tools.make_model_cosyvoice3 import make_model as make_cosyvoice3

    return {"cosyvoice2": make_model, "cosyvoice3": make_cosyvoice3}[family]


def main(argv: list[str] | None = None) -> None:
    from light_tts.families import family_names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=family_names(), default="cosyvoice2")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm_seed", type=int, default=None, help="the LLM's weights from this seed instead")
    parser.add_argument("--flow_seed", type=int, default=None, help="the flow's and HiFT's weights from this seed")
    args = parser.parse_args(argv)
    if args.family == "orpheus":
        from light_tts.tools.make_orpheus import make_orpheus

        if args.flow_seed is not None:
            parser.error("--flow_seed: an Orpheus model has no flow (its codec is SNAC)")
        out = make_orpheus(args.out_dir, args.size, args.seed, args.llm_seed)
    else:
        out = writer_of(args.family)(args.out_dir, args.size, args.seed, args.llm_seed, args.flow_seed)
    print(f"wrote a random-weight {args.size} {args.family} model to {out} (its audio is noise)")


if __name__ == "__main__":
    main()
