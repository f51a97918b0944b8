"""CosyVoice2-0.5B (`cosyvoice2.yaml`): the Qwen2 speech LM, the conformer + CFM flow and HiFT.

The first family: what it supplies is what the engines were written for, so each entry here names the existing
code. Other families implement the same names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from light_tts.families.modes import LLMPrompt
from light_tts.frontend.tokenizer import COSYVOICE2_SPECIAL_TOKENS
from light_tts.model_config import ModelConfig
from light_tts.model_dir import YAML_NAME, check_complete, load_model_config
from light_tts.errors import RequestError
from light_tts.request_rules import CROSS_LINGUAL, INSTRUCT, MODES, ZERO_SHOT

if TYPE_CHECKING:
    from light_tts.llm.spec import LLMSpec

NAME = "cosyvoice2"
MARKER = YAML_NAME
END_OF_PROMPT = "<|endofprompt|>"  # a special token of the tokenizer: where an instruction ends
# the tokenizer's control tags a text may carry (each one token id): vocal events and emphasis
CONTROL_TAGS = tuple(t for t in COSYVOICE2_SPECIAL_TOKENS if not t.startswith("<|"))

__all__ = ["NAME", "MARKER", "MODES", "CONTROL_TAGS", "check_complete", "load_model_config", "llm_spec",
           "llm_prompt"]


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


def llm_prompt(mode: str, transcript: str = "", instruction: str = "") -> LLMPrompt:
    """The LLM's prompt in `mode`, as upstream's cli/frontend.py builds it: zero-shot (frontend_zero_shot) gives the
    transcript and the prompt's speech tokens; instruct (frontend_instruct2) the instruction ending with
    <|endofprompt|> (added when missing) in the transcript's place and no prompt speech; cross-lingual
    (frontend_cross_lingual) neither. Voice conversion has no LLM."""
    if mode == ZERO_SHOT:
        return LLMPrompt(transcript, uses_prompt_speech=True)
    if mode == INSTRUCT:
        text = instruction if instruction.endswith(END_OF_PROMPT) else instruction + END_OF_PROMPT
        return LLMPrompt(text, uses_prompt_speech=False)
    if mode == CROSS_LINGUAL:
        return LLMPrompt("", uses_prompt_speech=False)
    raise RequestError(f"mode {mode!r} has no LLM prompt ({NAME} modes: {', '.join(MODES)})")
