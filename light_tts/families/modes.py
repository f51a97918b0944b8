"""What a request's mode gives the LLM: the family's prompt for the mode (LLMPrompt), turned into token ids.

Every family builds its own LLM prompt per mode (`llm_prompt(mode, transcript, instruction)` in its module); the
flow's prompt is the same in every mode (the voice's speech tokens, mel and speaker embedding), so a voice's
features are computed once and serve every mode. Pure: no torch, no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from light_tts.frontend.prompt import Prompt


@dataclass(frozen=True)
class LLMPrompt:
    """The LLM's side of a voice prompt in one mode.

    text: what precedes the text to speak in the LLM's input (the transcript, or an instruction with its end
    marker, or nothing); the frontend tokenizes it, normalising it unless it carries `<|...|>` markup, as upstream.
    uses_prompt_speech: the LLM also gets the prompt's speech tokens after task_id (zero-shot only).
    """

    text: str
    uses_prompt_speech: bool


def llm_prompt_tokens(llm_prompt: LLMPrompt, prompt: Prompt,
                      tokenize_prompt_text: Callable[[str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt text tokens int32 [Lp], prompt speech tokens int32 [P or 0]) of the LLM's input
    [sos, prompt text ++ text, task_id, prompt speech]."""
    text = tokenize_prompt_text(llm_prompt.text) if llm_prompt.text else np.zeros(0, np.int32)
    speech = prompt.speech_tokens if llm_prompt.uses_prompt_speech else np.zeros(0, np.int32)
    return np.asarray(text, dtype=np.int32), np.asarray(speech, dtype=np.int32)
