"""Writes a random-weight Orpheus model directory in the released layout (make_model --family orpheus).

Files: config.json (LlamaForCausalLM, llama3 rope scaling, tied embeddings), model-0000K-of-0000N.safetensors
shards + model.safetensors.index.json, tokenizer.json with the released ids (Llama 3's specials at
128000-128255, `<custom_token_N>` at 128256 + N; the BPE below 128000 is a small one trained here, padded with
unused entries), tokenizer_config.json, special_tokens_map.json, and snac_24khz/ (config.json, pytorch_model.bin
with weight-norm keys as the released SNAC, encoder included). `full` has the released dimensions (weights written
in bfloat16: 6.6 GB in 2 shards), `tiny` the same vocabulary and ids with a small body and codec.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from light_tts.models.orpheus.config import CONFIG_NAME, SNAC_DIR, TOKENIZER_NAME, SNACConfig
from light_tts.models.orpheus.snac import ResidualUnit, SNACDecoder, Snake1d

VOCAB = 156940  # 128,256 Llama 3 ids + 28,683 custom tokens + 1 spare row (orpheus-model.md section 2)
NUM_CUSTOM = 28683
SHARD_BYTES = 5 * 2**30


@dataclass(frozen=True)
class OrpheusDims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    dtype: torch.dtype
    snac: SNACConfig


ORPHEUS_SIZES = {
    # GQA groups of 3 as the released 24 / 8 heads; head_dim 16 (the kernels' smallest)
    "tiny": OrpheusDims(96, 2, 6, 2, 256, torch.float32, SNACConfig(encoder_dim=4, decoder_dim=64)),
    "full": OrpheusDims(3072, 28, 24, 8, 8192, torch.bfloat16, SNACConfig()),
}


def llama_config(d: OrpheusDims) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.hidden // d.heads,
        "vocab_size": VOCAB,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "torch_dtype": str(d.dtype).removeprefix("torch."),
        "use_cache": True,
    }


def llama_state_dict(d: OrpheusDims, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """transformers' Llama keys, weights drawn as normal(0, 0.02) (its initializer_range), norms at 1."""

    def w(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=torch.float32).normal_(0.0, 0.02, generator=gen).to(d.dtype)

    head_dim = d.hidden // d.heads
    sd = {"model.embed_tokens.weight": w(VOCAB, d.hidden), "model.norm.weight": torch.ones(d.hidden, dtype=d.dtype)}
    for i in range(d.layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = w(d.heads * head_dim, d.hidden)
        sd[p + "self_attn.k_proj.weight"] = w(d.kv_heads * head_dim, d.hidden)
        sd[p + "self_attn.v_proj.weight"] = w(d.kv_heads * head_dim, d.hidden)
        sd[p + "self_attn.o_proj.weight"] = w(d.hidden, d.heads * head_dim)
        sd[p + "mlp.gate_proj.weight"] = w(d.intermediate, d.hidden)
        sd[p + "mlp.up_proj.weight"] = w(d.intermediate, d.hidden)
        sd[p + "mlp.down_proj.weight"] = w(d.hidden, d.intermediate)
        sd[p + "input_layernorm.weight"] = torch.ones(d.hidden, dtype=d.dtype)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(d.hidden, dtype=d.dtype)
    return sd


def write_shards(sd: dict[str, torch.Tensor], out: Path) -> None:
    """model-0000K-of-0000N.safetensors of at most SHARD_BYTES each, and the index transformers reads."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in sd.items():
        if shards[-1] and size + t.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += t.nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in sd.values())}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def tokenizer_json() -> dict:
    """A byte-level BPE below 128000 (a small trained one, padded with never-produced entries), Llama 3's 256
    specials, then <custom_token_0..28682> as ordinary added tokens; a post-processor adds the bos as Llama's."""
    from light_tts.tools.make_tokenizer import train_bpe

    data = json.loads(train_bpe(1000).to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), 128000):
        vocab[f"<|unused_{i}|>"] = i
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        8: "<|eom_id|>",
        9: "<|eot_id|>",
    }

    def entry(i: int, content: str, special: bool) -> dict:
        return {
            "id": i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }

    added = [entry(128000 + i, named.get(i, f"<|reserved_special_token_{i}|>"), True) for i in range(256)]
    added += [entry(128256 + n, f"<custom_token_{n}>", False) for n in range(NUM_CUSTOM)]
    data["added_tokens"] = added
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {
            "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}
        },
    }
    return data


def write_tokenizer(out: Path) -> None:
    (out / TOKENIZER_NAME).write_text(json.dumps(tokenizer_json()), encoding="utf-8")
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **specials,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 131072,
                "clean_up_tokenization_spaces": True,
            },
            indent=2,
        )
    )


class _EncoderBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            *(ResidualUnit(in_dim, d, in_dim) for d in (1, 3, 9)),
            Snake1d(in_dim),
            nn.Conv1d(in_dim, out_dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )


class _SNACWeights(nn.Module):
    """Every parameter of the released SNAC (the decode path's modules, the encoder and the quantizer's in_proj,
    which only encoding uses), to write a checkpoint with all of its keys."""

    def __init__(self, cfg: SNACConfig):
        super().__init__()
        d, blocks = cfg.encoder_dim, [nn.Conv1d(1, cfg.encoder_dim, 7, padding=3)]
        for stride in cfg.encoder_rates:
            blocks.append(_EncoderBlock(d, 2 * d, stride))
            d *= 2
        blocks.append(nn.Conv1d(d, d, 7, padding=3, groups=d))
        self.encoder = nn.Module()
        self.encoder.block = nn.Sequential(*blocks)
        decode = SNACDecoder(cfg)
        self.decoder, self.quantizer = decode.decoder, decode.quantizer
        for q in self.quantizer.quantizers:
            q.in_proj = nn.Conv1d(cfg.latent, cfg.codebook_dim, 1)


def snac_state_dict(cfg: SNACConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random SNAC weights with every conv weight split into weight norm's (g, v) under the released names."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        model = _SNACWeights(cfg)
    sd = {}
    for key, t in model.state_dict().items():
        if key.endswith(".weight") and t.dim() == 3:  # a conv (SNAC's are all weight-normed)
            base = key.removesuffix(".weight")
            sd[f"{base}.parametrizations.weight.original0"] = t.flatten(1).norm(dim=1).view(-1, 1, 1)
            sd[f"{base}.parametrizations.weight.original1"] = t
        else:
            sd[key] = t
    return sd


def snac_config_json(cfg: SNACConfig) -> dict:
    return {
        "sampling_rate": cfg.sampling_rate,
        "encoder_dim": cfg.encoder_dim,
        "encoder_rates": list(cfg.encoder_rates),
        "decoder_dim": cfg.decoder_dim,
        "decoder_rates": list(cfg.decoder_rates),
        "attn_window_size": cfg.attn_window_size,
        "codebook_size": cfg.codebook_size,
        "codebook_dim": cfg.codebook_dim,
        "vq_strides": list(cfg.vq_strides),
        "noise": cfg.noise,
        "depthwise": cfg.depthwise,
    }


def make_orpheus(out_dir: str | Path, size: str = "tiny", seed: int = 0, llm_seed: int | None = None) -> Path:
    """Writes the directory and returns its path (files are overwritten). llm_seed: the LLM's weights from another
    seed, every other file as `seed` makes it (another "style" of the same model)."""
    if size not in ORPHEUS_SIZES:
        raise ValueError(f"size must be one of {sorted(ORPHEUS_SIZES)}, not {size!r}")
    d = ORPHEUS_SIZES[size]
    out = Path(out_dir)
    (out / SNAC_DIR).mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(llama_config(d), indent=2))
    write_tokenizer(out)
    gen = torch.Generator().manual_seed(seed)
    snac_sd = snac_state_dict(d.snac, gen)
    llm_gen = gen if llm_seed is None else torch.Generator().manual_seed(llm_seed)
    write_shards(llama_state_dict(d, llm_gen), out)
    (out / SNAC_DIR / CONFIG_NAME).write_text(json.dumps(snac_config_json(d.snac), indent=2))
    torch.save(snac_sd, out / SNAC_DIR / "pytorch_model.bin")
    return out
