"""What a request's mode gives the LLM: the family's prompt for the mode (LLMPrompt), turned into token ids.

Every family builds its own LLM prompt per mode (`ModelFamily.llm_prompt(mode, transcript, instruction)`); the
flow's prompt is the same in every mode (the voice's speech tokens, mel and speaker embedding), so a voice's
features are computed once and serve every mode. Pure: no torch, no model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from light_tts.families.base import LLMPrompt
from light_tts.frontend.prompt import Prompt


def llm_prompt_tokens(
    llm_prompt: LLMPrompt, prompt: Prompt, tokenize_prompt_text: Callable[[str], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt text tokens int32 [Lp], prompt speech tokens int32 [P or 0]) of the LLM's input
    [sos, prompt text ++ text, task_id, prompt speech]."""
    text = tokenize_prompt_text(llm_prompt.text) if llm_prompt.text else np.zeros(0, np.int32)
    speech = prompt.speech_tokens if llm_prompt.uses_prompt_speech else np.zeros(0, np.int32)
    return np.asarray(text, dtype=np.int32), np.asarray(speech, dtype=np.int32)
