"""Writes a complete random-weight model directory in the released layout of a family (CosyVoice2-0.5B here;
CosyVoice3 in make_model_cosyvoice3.py).

    python -m light_tts.tools.make_model OUT [--family cosyvoice2|cosyvoice3] --size tiny|full [--seed N]
        [--llm_seed N] [--flow_seed N]

`tiny` runs fast on a CPU (tests, the server's default start); `full` has the released dimensions for GPU
benchmarks. Every file a released directory has is written (cosyvoice2.yaml in HyperPyYAML form, llm.pt, flow.pt,
hift.pt, campplus.onnx, speech_tokenizer_v2.onnx, flow.decoder.estimator.fp32.onnx, CosyVoice-BlankEN/), so the
normal loaders read it unchanged.
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

ESTIMATOR_ONNX = "flow.decoder.estimator.fp32.onnx"


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
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

YAML_TEMPLATE = """\
# Random-weight CosyVoice2 model written by light_tts.tools.make_model (size {size}, seed {seed}).
# Same format as the released cosyvoice2.yaml; its audio is noise.
__set_seed1: !apply:random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]

sample_rate: 24000
llm_input_size: {d.hidden}
llm_output_size: {d.hidden}
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2
chunk_size: 25
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
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
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
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

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {d.hift_channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {d.f0_channels}

feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False

get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
"""


def qwen_config_json(d: Dims) -> dict:
    """CosyVoice-BlankEN/config.json of a Qwen2 body with these dimensions."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": d.hidden, "intermediate_size": d.intermediate, "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads, "vocab_size": d.vocab,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "use_sliding_window": False, "torch_dtype": "bfloat16",
    }


def _save(module: torch.nn.Module, path: Path) -> None:
    torch.save({k: v.contiguous() for k, v in module.state_dict().items()}, path)


def _seeded(seed: int | None, build):
    """build() under its own seed, leaving the global random stream as it was (None: build() on that stream)."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_model(out_dir: str | Path, size: str = "tiny", seed: int = 0, llm_seed: int | None = None,
               flow_seed: int | None = None) -> Path:
    """Writes the directory and returns its path; an existing directory is overwritten file by file. With
    llm_seed (flow_seed) the LLM (the flow and HiFT) take their weights from that seed, every other file is as
    `seed` makes it."""
    from light_tts.decode.estimator_onnx import export_estimator_onnx
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
    (out / YAML_NAME).write_text(YAML_TEMPLATE.format(d=d, size=size, seed=seed), encoding="utf-8")
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
    return {"cosyvoice2": make_model}[family]


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
    out = writer_of(args.family)(args.out_dir, args.size, args.seed, args.llm_seed, args.flow_seed)
    print(f"wrote a random-weight {args.size} {args.family} model to {out} (its audio is noise)")


if __name__ == "__main__":
    main()
