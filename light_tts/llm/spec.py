"""What a model family tells the LLM engine (LLMSpec), so that the engine never asks which family it runs.

- arch: the network: a pre-norm decoder body (Qwen2 or Llama: QwenConfig), one input embedding table over the
  engine's id space and one output head (bias or not, tied to the embedding or not; scoring all ids or only the
  range the layout can sample);
- layout: the engine's id space and how a request becomes a Sequence (prompt ids, stop ids, length bounds,
  shareable voice prefix, bistream feeding): request.TokenLayout for the CosyVoice speech LMs,
  prompt_layout.PromptLayout for a plain causal LM fed its prompt ids (Orpheus);
- make_sampler(num_rows, device): the device sampler (sampler.Sampler for RAS, nucleus_sampler.NucleusSampler for
  temperature / top-p / repetition penalty);
- engine_weights(released state dict) -> the engine layout of model.EngineSpeechLM, and read_weights() -> the
  released state dict from the model directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from light_tts.model_config import QwenConfig


@dataclass(frozen=True)
class LMArch:
    body: QwenConfig
    num_embeddings: int  # rows of the input embedding table (the engine's id space)
    num_logits: int  # rows of the output head (the ids the sampler draws from)
    head_bias: bool = False
    tie_head: bool = False  # the head's weight is the embedding table (one copy in memory)
    # (lo, hi): the ids any step may sample (the layout's sampled_range); the head scores only those, logit column c
    # being id lo + c, and the sampler draws among them. None: all num_logits.
    logit_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class LLMSpec:
    arch: LMArch
    layout: Any  # request.TokenLayout or prompt_layout.PromptLayout (the interface Sequence uses)
    make_sampler: Callable[[int, Any], Any]  # (req_to_token rows, device) -> a device sampler
    engine_weights: Callable[[dict], dict]  # released state dict -> engine parameter name -> tensor
    read_weights: Callable[[], dict]  # the released state dict, read from the model directory
