"""Orpheus's LM offline: the prompt it is served and a plain-torch Llama (qwen2.Qwen2ForCausalLM with a Llama body
config: the same modules and checkpoint keys) decoding one request, the reference the engine is tested against.

Prompt (what ref-pkg serves, orpheus-model.md section 3): [bos] start_of_human bos tokens("voice: text")
end_of_text end_of_human start_of_ai start_of_speech. ref-pkg decodes its id list to a string that vLLM encodes
again, adding a second bos in front; `double_bos` keeps that (the default), or serves the single-bos layout the
model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from light_tts.errors import ModelDirError
from light_tts.model_config import QwenConfig
from light_tts.models.orpheus.config import OrpheusTokens
from light_tts.models.qwen2 import KVCache, Qwen2ForCausalLM


def prompt_text(voice: str | None, text: str) -> str:
    """The text slot of the prompt: "voice: text" (one space after the colon, as ref-pkg), or the text alone."""
    return f"{voice}: {text}" if voice else text


def build_prompt(tokens: OrpheusTokens, text_ids: list[int], double_bos: bool = True) -> list[int]:
    """The prompt ids around the text slot's ids (tokenized without special tokens)."""
    head = [tokens.bos] if double_bos else []
    return head + [
        tokens.start_of_human,
        tokens.bos,
        *text_ids,
        tokens.end_of_text,
        tokens.end_of_human,
        tokens.start_of_ai,
        tokens.start_of_speech,
    ]


def load_causal_lm(body: QwenConfig, sd: dict[str, torch.Tensor]) -> Qwen2ForCausalLM:
    """A Llama (or Qwen2) causal LM from a transformers state dict; a tied head is the embedding itself (an
    lm_head.weight key beside it, as full-state-dict saves write, is accepted and not used)."""
    with torch.device("meta"):
        lm = Qwen2ForCausalLM(body)
    lm.to_empty(device="cpu")
    if body.tie_word_embeddings:
        lm.lm_head.weight = lm.model.embed_tokens.weight
        sd = {**sd, "lm_head.weight": sd.get("model.embed_tokens.weight")}
    missing = sorted(set(lm.state_dict()) - set(sd))
    unexpected = sorted(set(sd) - set(lm.state_dict()))
    if missing or unexpected:
        raise ModelDirError(
            f"the checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    lm.load_state_dict({k: v.float() for k, v in sd.items()})
    return lm.eval().requires_grad_(False)


@torch.inference_mode()
def generate(
    lm: Qwen2ForCausalLM,
    prompt_ids: list[int],
    sample: Callable[[torch.Tensor, list[int]], int],
    stop_ids: frozenset[int],
    max_len: int,
    logit_range: tuple[int, int] | None = None,
) -> Iterator[int]:
    """Ids after the prompt until a stop id (not yielded) or max_len; sample(logits, decoded) picks each. With
    logit_range (lo, hi) the logits are those of ids [lo, hi) only, from the head's rows as the engine takes them
    (the same view of the same weight, so the products add up alike)."""
    body, cache = lm.model, KVCache(len(lm.model.layers))
    inputs = torch.tensor([prompt_ids])
    decoded: list[int] = []
    head = lm.lm_head.weight if logit_range is None else lm.lm_head.weight[logit_range[0] : logit_range[1]]
    for _ in range(max_len):
        hidden = body(body.embed_tokens(inputs), cache)
        logits = torch.nn.functional.linear(hidden[0, -1:], head)[0].float()
        token = sample(logits, decoded)
        if token in stop_ids:
            return
        yield token
        decoded.append(token)
        inputs = torch.tensor([[token]])
