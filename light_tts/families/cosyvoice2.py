"""CosyVoice2-0.5B (`cosyvoice2.yaml`): the Qwen2 speech LM, the conformer + CFM flow and HiFT.

The first family: its modules are in models/cosyvoice2/, its engines are the shared ones (llm/, decode/) as they
were written for it, so each method here names existing code.
"""

from __future__ import annotations

from light_tts.families.base import CROSS_LINGUAL, INSTRUCT, ZERO_SHOT, LLMPrompt, ModelFamily
from light_tts.model_dir import SPEECH_TOKENIZER, TOKENIZER_DIR, YAML_NAME

END_OF_PROMPT = "<|endofprompt|>"


class CosyVoice2Family(ModelFamily):
    name = "cosyvoice2"
    marker = YAML_NAME
    speech_tokenizer = SPEECH_TOKENIZER
    flow_files = ("flow.pt", "hift.pt")

    @property
    def frontend_files(self) -> tuple[str, ...]:
        return (self.speech_tokenizer, "campplus.onnx", TOKENIZER_DIR)

    def load_model_config(self, model_dir):
        from light_tts.model_dir import load_model_config

        return load_model_config(model_dir)

    def check_complete(self, model_dir) -> None:
        from light_tts.model_dir import check_complete

        check_complete(model_dir, self.marker, ("campplus.onnx", self.speech_tokenizer))

    def llm_prompt(self, mode: str, transcript: str = "", instruction: str = "") -> LLMPrompt:
        """As upstream's frontend: zero-shot gives the transcript and the prompt speech; instruct (instruct2) the
        instruction ending with <|endofprompt|> and no prompt speech; cross-lingual neither."""
        self.check_mode(mode)
        if mode == INSTRUCT:
            text = instruction if instruction.endswith(END_OF_PROMPT) else instruction + END_OF_PROMPT
            return LLMPrompt(text, uses_prompt_speech=False)
        if mode == CROSS_LINGUAL:
            return LLMPrompt("", uses_prompt_speech=False)
        assert mode == ZERO_SHOT
        return LLMPrompt(transcript, uses_prompt_speech=True)

    def speech_lm(self, cfg, device: str = "cpu"):
        from light_tts.models.speech_lm import SpeechLM

        return SpeechLM.from_checkpoint(cfg.llm, cfg.path("llm.pt")).to(device).eval()

    def token2wav(self, cfg, device: str = "cpu"):
        from light_tts.token2wav import Token2Wav

        return Token2Wav(cfg, device)

    def decode_engine(self, cfg, **kwargs):
        from light_tts.decode.engine import DecodeEngine

        return DecodeEngine(cfg, **kwargs)


FAMILY = CosyVoice2Family()
