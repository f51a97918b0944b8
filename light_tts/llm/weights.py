"""Released checkpoints -> the engine layout of model.EngineSpeechLM, one table per checkpoint layout.

CosyVoice's llm.pt (upstream Qwen2LM / CosyVoice3LM state dict), per engine parameter (L = llm.model.model.layers.{i}):
  embed.weight                       cat(speech_embedding.weight, llm_embedding.weight (CosyVoice2 only: its sos
                                         and task_id rows), llm.model.model.embed_tokens.weight)
  layers.{i}.qkv_proj.{weight,bias}  cat(L.self_attn.{q,k,v}_proj.{weight,bias})
  layers.{i}.o_proj.weight           L.self_attn.o_proj.weight
  layers.{i}.gate_up_proj.weight     cat(L.mlp.gate_proj.weight, L.mlp.up_proj.weight)
  layers.{i}.down_proj.weight        L.mlp.down_proj.weight
  layers.{i}.input_layernorm         L.input_layernorm.weight
  layers.{i}.post_attention_layernorm  L.post_attention_layernorm.weight
  norm                               llm.model.model.norm.weight
  llm_decoder.{weight,bias}          llm_decoder.{weight,bias} (CosyVoice3's head has no bias)
llm.model.lm_head.weight (tied to embed_tokens, never used by a speech LM) is the one key left out.

A transformers causal LM (LlamaForCausalLM / Qwen2ForCausalLM keys; Orpheus), per engine parameter
(L = model.layers.{i}): the same table with `model.` for `llm.model.model.`, no speech or special rows
(embed.weight = model.embed_tokens.weight), q/k/v biases only where the body has them, and
llm_decoder.weight = lm_head.weight, or the embedding itself when the head is tied (an lm_head.weight key beside
a tied embedding, as full-state-dict saves write, is accepted and not used).
"""

from __future__ import annotations

import torch

from light_tts.errors import ModelDirError
from light_tts.llm.model import EngineSpeechLM

UNUSED_KEYS = ("llm.model.lm_head.weight",)


class _Taker:
    """Hands out released tensors by key, remembering which were used, so that a key nobody used is an error."""

    def __init__(self, sd: dict[str, torch.Tensor], source: str, unused: tuple[str, ...] = ()):
        self.sd, self.source, self.used = sd, source, set(unused)

    def __call__(self, *keys: str) -> list[torch.Tensor]:
        missing = [k for k in keys if k not in self.sd]
        if missing:
            raise ModelDirError(f"{self.source} lacks {', '.join(missing)}")
        self.used.update(keys)
        return [self.sd[k] for k in keys]

    def check_all_used(self) -> None:
        unexpected = sorted(set(self.sd) - self.used)
        if unexpected:
            raise ModelDirError(f"{self.source} has keys the engine does not know: {', '.join(unexpected[:10])}")


def _body_layers(take: _Taker, body: str, num_layers: int, qkv_bias: bool) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(num_layers):
        src, dst = f"{body}layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        out[dst + "qkv_proj.weight"] = torch.cat(take(*(f"{attn}{p}_proj.weight" for p in "qkv")))
        if qkv_bias:
            out[dst + "qkv_proj.bias"] = torch.cat(take(*(f"{attn}{p}_proj.bias" for p in "qkv")))
        out[dst + "o_proj.weight"] = take(attn + "o_proj.weight")[0]
        out[dst + "gate_up_proj.weight"] = torch.cat(take(src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight"))
        out[dst + "down_proj.weight"] = take(src + "mlp.down_proj.weight")[0]
        out[dst + "input_layernorm"] = take(src + "input_layernorm.weight")[0]
        out[dst + "post_attention_layernorm"] = take(src + "post_attention_layernorm.weight")[0]
    return out


def engine_state_dict(
    sd: dict[str, torch.Tensor], num_layers: int, has_special_rows: bool = True, has_decoder_bias: bool = True
) -> dict[str, torch.Tensor]:
    """CosyVoice llm.pt key names -> engine key names; every released key is used once (or in UNUSED_KEYS).
    has_special_rows: sos and task_id are llm_embedding rows (else speech rows); has_decoder_bias: llm_decoder has
    a bias (both from the family's SpeechIds)."""
    body = "llm.model.model."
    take = _Taker(sd, "llm.pt", UNUSED_KEYS)
    special = ("llm_embedding.weight",) if has_special_rows else ()
    out = {
        "embed.weight": torch.cat(take("speech_embedding.weight", *special, body + "embed_tokens.weight")),
        "norm": take(body + "norm.weight")[0],
        "llm_decoder.weight": take("llm_decoder.weight")[0],
    }
    if has_decoder_bias:
        out["llm_decoder.bias"] = take("llm_decoder.bias")[0]
    out.update(_body_layers(take, body, num_layers, qkv_bias=True))
    take.check_all_used()
    return out


def causal_lm_state_dict(
    sd: dict[str, torch.Tensor], num_layers: int, qkv_bias: bool, tie_head: bool
) -> dict[str, torch.Tensor]:
    """transformers causal-LM key names (model.*, lm_head.weight) -> engine key names."""
    take = _Taker(sd, "the checkpoint", ("lm_head.weight",) if tie_head else ())
    embed = take("model.embed_tokens.weight")[0]
    out = {
        "embed.weight": embed,
        "norm": take("model.norm.weight")[0],
        "llm_decoder.weight": embed if tie_head else take("lm_head.weight")[0],
        **_body_layers(take, "model.", num_layers, qkv_bias),
    }
    take.check_all_used()
    return out


def load_engine_weights(model: EngineSpeechLM, mapped: dict[str, torch.Tensor]) -> None:
    """Fill every engine parameter from an engine-layout state dict (shapes checked), casting to the model's
    dtype."""
    own = model.state_dict()
    for name, param in own.items():
        if mapped[name].shape != param.shape:
            raise ModelDirError(
                f"the checkpoint gives {name} shape {tuple(mapped[name].shape)}, the model has {tuple(param.shape)}"
            )
    model.load_state_dict(mapped, strict=True)
