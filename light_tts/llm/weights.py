"""Released llm.pt (upstream Qwen2LM / CosyVoice3LM state dict) -> the engine layout of model.EngineSpeechLM.

The mapping, per engine parameter (L = llm.model.model.layers.{i}):
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
"""

from __future__ import annotations

import torch

from light_tts.errors import ModelDirError
from light_tts.llm.model import EngineSpeechLM

UNUSED_KEYS = ("llm.model.lm_head.weight",)


def engine_state_dict(sd: dict[str, torch.Tensor], num_layers: int, has_special_rows: bool = True,
                      has_decoder_bias: bool = True) -> dict[str, torch.Tensor]:
    """Released key names -> engine key names; every released key is used once (or listed in UNUSED_KEYS).
    has_special_rows: sos and task_id are llm_embedding rows (else speech rows); has_decoder_bias: llm_decoder has
    a bias (both from the family's SpeechIds)."""
    body = "llm.model.model."
    used = set(UNUSED_KEYS)

    def take(*keys: str) -> list[torch.Tensor]:
        missing = [k for k in keys if k not in sd]
        if missing:
            raise ModelDirError(f"llm.pt lacks {', '.join(missing)}")
        used.update(keys)
        return [sd[k] for k in keys]

    special = ("llm_embedding.weight",) if has_special_rows else ()
    out = {
        "embed.weight": torch.cat(take("speech_embedding.weight", *special, body + "embed_tokens.weight")),
        "norm": take(body + "norm.weight")[0],
        "llm_decoder.weight": take("llm_decoder.weight")[0],
    }
    if has_decoder_bias:
        out["llm_decoder.bias"] = take("llm_decoder.bias")[0]
    for i in range(num_layers):
        src, dst = f"{body}layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        out[dst + "qkv_proj.weight"] = torch.cat(take(*(f"{attn}{p}_proj.weight" for p in "qkv")))
        out[dst + "qkv_proj.bias"] = torch.cat(take(*(f"{attn}{p}_proj.bias" for p in "qkv")))
        out[dst + "o_proj.weight"] = take(attn + "o_proj.weight")[0]
        out[dst + "gate_up_proj.weight"] = torch.cat(take(src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight"))
        out[dst + "down_proj.weight"] = take(src + "mlp.down_proj.weight")[0]
        out[dst + "input_layernorm"] = take(src + "input_layernorm.weight")[0]
        out[dst + "post_attention_layernorm"] = take(src + "post_attention_layernorm.weight")[0]
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise ModelDirError(f"llm.pt has keys the engine does not know: {', '.join(unexpected[:10])}")
    return out


def load_engine_weights(model: EngineSpeechLM, sd: dict[str, torch.Tensor]) -> None:
    """Fill every engine parameter from a released state dict (shapes checked), casting to the model's dtype."""
    ids = model.cfg.ids
    mapped = engine_state_dict(sd, len(model.layers), ids.sos_row is None, ids.decoder_bias)
    own = model.state_dict()
    for name, param in own.items():
        if mapped[name].shape != param.shape:
            raise ModelDirError(
                f"llm.pt gives {name} shape {tuple(mapped[name].shape)}, the model has {tuple(param.shape)}")
    model.load_state_dict(mapped, strict=True)
