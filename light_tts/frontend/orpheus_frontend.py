"""The Orpheus frontend: request text and voice -> sentences -> prompt ids (no prompt audio: a voice is a name).

Text is cleaned (control characters, terminal escapes; clean_text) but not normalised, as the references serve it,
and split at sentence punctuation into pieces of about 60-80 tokens (Baseten splits past 280 characters), each
spoken as its own prompt, one after another. Emotive tags (`<laugh>`, `<sigh>`, ...) are ordinary text and pass
through. Text that would encode as one of the model's control tokens (a literal `<custom_token_3>`, `<|eot_id|>`)
is refused: it would rewrite the prompt's structure.
"""

from __future__ import annotations

from light_tts.errors import RequestError, TextError
from light_tts.frontend.text_norm import (
    MAX_SENTENCE_TOKENS,
    clean_text,
    contains_chinese,
    is_only_punctuation,
    split_paragraph,
    split_to_budget,
)
from light_tts.models.orpheus.config import OrpheusConfig, load_tokenizer
from light_tts.models.orpheus.lm import build_prompt, prompt_text
from light_tts.request_rules import MAX_TEXT_CHARS


class OrpheusFrontend:
    def __init__(self, cfg: OrpheusConfig, tokenizer=None, max_text_chars: int = MAX_TEXT_CHARS):
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.model_dir)
        self.max_text_chars = max_text_chars

    def warm_up(self) -> None:
        """Nothing to warm: no prompt models (the tokenizer loaded in __init__)."""

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def split(self, text: str) -> list[str]:
        """The sentences of a request's text; TextError when there is nothing to speak or it is too long."""
        if len(text) > self.max_text_chars:
            raise TextError(f"text is {len(text)} characters; the limit is {self.max_text_chars}")
        text = clean_text(text).strip()
        if not text:
            raise TextError("text is empty")
        lang = "zh" if contains_chinese(text) else "en"
        count = lambda piece: len(self.tokenize(piece))  # noqa: E731
        pieces = [
            part.strip()
            for p in split_paragraph(text, self.tokenize, lang)
            for part in split_to_budget(p, count, MAX_SENTENCE_TOKENS)
        ]
        pieces = [p for p in pieces if p and not is_only_punctuation(p)]
        if not pieces:
            raise TextError(f"text has nothing speakable: {text[:50]!r}")
        return pieces

    def check_voice(self, voice: str | None) -> str:
        """The voice's name as the prompt spells it; RequestError naming the voices for an unknown one."""
        if voice is None or voice not in self.cfg.voices:
            raise RequestError(f"unknown voice {voice!r}: this model speaks as {', '.join(self.cfg.voices)}")
        return voice

    def sentence_tokens(self, text: str, voice: str | None) -> list[list[int]]:
        """The LLM's whole prompt for each sentence of a request's text in `voice` (the encode process's job)."""
        voice = self.check_voice(voice)
        return [self.prompt_ids(sentence, voice) for sentence in self.split(text)]

    def prompt_ids(self, sentence: str, voice: str) -> list[int]:
        """The prompt of one sentence in a voice (lm.build_prompt)."""
        ids = self.tokenize(prompt_text(voice, sentence))
        if any(t >= self.cfg.tokens.bos for t in ids):  # Llama 3's specials and every added token sit from bos on
            raise TextError("text contains one of the model's control tokens (such as <custom_token_N> or <|...|>)")
        return build_prompt(self.cfg.tokens, ids, self.cfg.double_bos)
