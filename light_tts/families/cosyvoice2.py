"""CosyVoice2-0.5B (`cosyvoice2.yaml`): the Qwen2 speech LM, the conformer + CFM flow and HiFT.

The first family: what it supplies is what the engines were written for, so each entry here names the existing
code. Other families implement the same names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from light_tts.model_config import ModelConfig
from light_tts.model_dir import YAML_NAME, check_complete, load_model_config

if TYPE_CHECKING:
    from light_tts.llm.spec import LLMSpec

NAME = "cosyvoice2"
MARKER = YAML_NAME

__all__ = ["NAME", "MARKER", "check_complete", "load_model_config", "llm_spec"]


def llm_spec(cfg: ModelConfig) -> LLMSpec:
    """The LLM engine's view of the speech LM: Qwen2 body, one embedding table over speech, sos/task_id and text
    ids (request.TokenLayout), the biased speech head, RAS sampling, llm.pt."""
    from light_tts.llm.request import TokenLayout
    from light_tts.llm.sampler import Sampler
    from light_tts.llm.spec import LLMSpec, LMArch
    from light_tts.llm.weights import engine_state_dict
    from light_tts.models.weights import read_state_dict

    layout = TokenLayout.from_config(cfg.llm)
    body = cfg.llm.qwen
    return LLMSpec(
        arch=LMArch(body, layout.num_embeddings, cfg.llm.num_speech_rows, head_bias=True),
        layout=layout,
        make_sampler=lambda num_rows, device: Sampler(cfg.llm.sampling, reject_from=layout.eos),
        engine_weights=lambda sd: engine_state_dict(sd, body.num_hidden_layers),
        read_weights=lambda: read_state_dict(cfg.path("llm.pt")),
    )
