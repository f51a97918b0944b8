"""What the random-model writers of the CosyVoice families share (make_model.py for CosyVoice2,
make_model_cosyvoice3.py): the Qwen2 body's dimensions and config.json, the yaml sections both families' files have
(formatted with each family's class names), and saving weights drawn from a seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class QwenDims:
    """The Qwen2 body of a CosyVoice speech LM (and its text vocabulary)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


# The sections the CosyVoice families share (formatted with each family's class names and dims)
YAML_HEAD = """\
# Random-weight {family} model written by light_tts.tools.make_model (size {size}, seed {seed}).
# Same format as the released {family}.yaml (its model sections); its audio is noise.
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

llm: !new:cosyvoice.llm.llm.{llm_class}
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

"""

YAML_HIFT = """\
hift: !new:cosyvoice.hifigan.generator.{hift_class}
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
{hift_extra}    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.{f0_class}
        num_class: 1
        in_channels: 80
        cond_channels: {d.f0_channels}

"""

YAML_FRONTEND = """\
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: {fmax}
    center: False

get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
{tokenizer_version}allowed_special: 'all'
"""

YAML_FLOW_HEAD = """\
flow: !new:cosyvoice.flow.flow.{flow_class}
    input_size: {flow_input_size}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
"""

YAML_CFM = """\
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
"""


def family_yaml(flow_template: str, names: dict, flow_names: dict, d, size: str, seed: int) -> str:
    """The yaml of a CosyVoice family: the shared sections, with the family's class names, and its flow section
    (flow_template holds {flow_head} and {cfm})."""
    flow = flow_template.format(d=d, flow_head=YAML_FLOW_HEAD.format(**flow_names), cfm=YAML_CFM)
    head, hift, frontend = (
        part.format(d=d, size=size, seed=seed, **names) for part in (YAML_HEAD, YAML_HIFT, YAML_FRONTEND)
    )
    return head + flow + hift + frontend


def qwen_config_json(d: QwenDims) -> dict:
    """CosyVoice-BlankEN/config.json of a Qwen2 body with these dimensions."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "vocab_size": d.vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "torch_dtype": "bfloat16",
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
