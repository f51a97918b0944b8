"""Fun-CosyVoice3-0.5B (`cosyvoice3.yaml`): the same Qwen2 speech LM with CosyVoice3's head and ids, a DiT flow
and a causal HiFT (models/cosyvoice3/).

Its prompts carry upstream's system text: zero-shot `You are a helpful assistant.<|endofprompt|>` + transcript,
instruct `You are a helpful assistant. <instruction><|endofprompt|>` (no prompt speech in the LLM), cross-lingual
the system text alone before the text (counted in the length bounds, as upstream's text carries it). FSQ silent and
breath tokens are filtered on their way to the codec (more than 5 in a row are dropped), as CosyVoice3Model.llm_job.
"""

from __future__ import annotations

from light_tts.families.base import CROSS_LINGUAL, INSTRUCT, ZERO_SHOT, LLMPrompt
from light_tts.families.cosyvoice2 import CosyVoice2Family
from light_tts.models.cosyvoice3.config import END_OF_PROMPT, SPEECH_TOKENIZER, YAML_NAME

SYSTEM_PROMPT = "You are a helpful assistant."
SILENT_TOKENS = frozenset((1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323))  # FSQ silence / breath
MAX_SILENT_RUN = 5


class SilentTokenFilter:
    """Passes a run of silent tokens up to MAX_SILENT_RUN long and drops the rest of it (the LLM saw them all)."""

    def __init__(self):
        self.run = 0

    def keep(self, token: int) -> bool:
        self.run = self.run + 1 if token in SILENT_TOKENS else 0
        return self.run <= MAX_SILENT_RUN


class CosyVoice3Family(CosyVoice2Family):
    """As CosyVoice2 (upstream's CosyVoice3 class extends CosyVoice2's) where files and the speech LM agree."""

    name = "cosyvoice3"
    marker = YAML_NAME
    speech_tokenizer = SPEECH_TOKENIZER

    def load_model_config(self, model_dir):
        from light_tts.models.cosyvoice3.config import load_model_config

        return load_model_config(model_dir)

    def llm_prompt(self, mode: str, transcript: str = "", instruction: str = "") -> LLMPrompt:
        """As upstream's examples for CosyVoice3 (example.py, cosyvoice3_example): the system text and
        <|endofprompt|> always; text that carries its own <|endofprompt|> is taken as is."""
        self.check_mode(mode)
        if mode == INSTRUCT:
            text = instruction if END_OF_PROMPT in instruction else f"{SYSTEM_PROMPT} {instruction}{END_OF_PROMPT}"
            return LLMPrompt(text, uses_prompt_speech=False)
        if mode == CROSS_LINGUAL:
            return LLMPrompt(SYSTEM_PROMPT + END_OF_PROMPT, uses_prompt_speech=False, counts_in_length=True)
        assert mode == ZERO_SHOT
        text = transcript if END_OF_PROMPT in transcript else SYSTEM_PROMPT + END_OF_PROMPT + transcript
        return LLMPrompt(text, uses_prompt_speech=True)

    def speech_token_filter(self) -> SilentTokenFilter:
        return SilentTokenFilter()

    def token2wav(self, cfg, device: str = "cpu"):
        from light_tts.decode.dit.dit_engine import cosyvoice3_token2wav

        return cosyvoice3_token2wav(cfg, device)

    def decode_engine(self, cfg, snac_kernels: str = "fused", **kwargs):
        """(snac_kernels is Orpheus's codec flag: not read here.)"""
        from light_tts.decode.dit.dit_engine import DiTDecodeEngine

        return DiTDecodeEngine(cfg, **kwargs)


FAMILY = CosyVoice3Family()
