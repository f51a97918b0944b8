"""Offline synthesis in one process: the reference that the server's output is tested against.

text + prompt wav + prompt text -> frontend -> speech-token LM (one sentence at a time) -> token2wav -> 24 kHz audio.
Everything model-specific comes from the directory's family (families/): its frontend, the LLM prompt of the mode,
its offline LM, the filter between LM and codec, its codec.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from light_tts.families import family_of
from light_tts.families.base import ZERO_SHOT, LLMPrompt, filtered
from light_tts.frontend.frontend import Prompt
from light_tts.request_rules import check_speed, sentence_seed, speech_token_bounds
from light_tts.sampling import RASSampler
from light_tts.token2wav import HopPolicy


class Pipeline:
    """Frontend, speech-token LM and token2wav of one model directory, on one device."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        self.family = family_of(model_dir)
        self.family.check_complete(model_dir)
        self.cfg = self.family.load_model_config(model_dir)
        self.device = torch.device(device)
        self.frontend = self.family.frontend(self.cfg)
        self.llm = self.family.speech_lm(self.cfg, str(self.device))
        self.token2wav = self.family.token2wav(self.cfg, self.device)

    def speech_tokens(self, text_tokens: list[int], prompt: Prompt, seed: int,
                      llm_prompt: LLMPrompt | None = None) -> Iterator[int]:
        """Speech tokens of one sentence, sampled with RAS from the request's seed, as the codec gets them.
        llm_prompt: what the mode gives the LLM (None: the prompt's text tokens and speech tokens, zero-shot)."""
        llm_prompt = llm_prompt or LLMPrompt("", uses_prompt_speech=True)
        num_counted = len(text_tokens) + (len(prompt.text_tokens) if llm_prompt.counts_in_length else 0)
        min_len, max_len = speech_token_bounds(num_counted)
        sampler = RASSampler(self.cfg.llm.sampling, seed)
        tokens = self.llm.generate(torch.tensor([text_tokens], dtype=torch.int32, device=self.device),
                                   *self._prompt_tensors(prompt, llm_prompt), sampler, min_len, max_len)
        return filtered(tokens, self.family.speech_token_filter())

    def encode_prompt(self, prompt_wav: bytes, transcript: str, mode: str = ZERO_SHOT,
                      instruction: str = "") -> tuple[Prompt, LLMPrompt]:
        llm_prompt = self.family.llm_prompt(mode, transcript, instruction)
        return self.frontend.encode_prompt(prompt_wav, llm_prompt.text), llm_prompt

    def synthesize(self, text: str, prompt_wav: bytes, prompt_text: str, stream: bool = False, speed: float = 1.0,
                   seed: int = 0, hop_policy: HopPolicy = HopPolicy(), exact_final: bool = False,
                   mode: str = ZERO_SHOT, instruction: str = "") -> Iterator[np.ndarray]:
        """Yields float32 audio: one array per sentence, or per streamed chunk when `stream`. `prompt_text` is the
        prompt audio's transcript; `mode` and `instruction` pick the LLM prompt (the family's llm_prompt)."""
        check_speed(speed, stream)
        sentences = self.frontend.normalize_and_split(text)  # text errors before the costly prompt encoding
        prompt, llm_prompt = self.encode_prompt(prompt_wav, prompt_text, mode, instruction)
        for index, sentence in enumerate(sentences):
            s = sentence_seed(seed, index)
            tokens = self.speech_tokens(self.frontend.tokenize(sentence), prompt, s, llm_prompt)
            if not stream:
                yield self.token2wav.offline(list(tokens), prompt, s, speed)
                continue
            session = self.token2wav.session(prompt, s, hop_policy, exact_final)
            for token in tokens:
                yield from session.feed([token])
            yield session.finish()

    def synthesize_bistream(self, text_pieces: Iterable[str], prompt_wav: bytes, prompt_text: str, seed: int = 0,
                            hop_policy: HopPolicy = HopPolicy()) -> Iterator[np.ndarray]:
        """Text arriving in pieces (e.g. from an LLM) -> streamed audio chunks of one utterance (zero-shot)."""
        prompt, llm_prompt = self.encode_prompt(prompt_wav, prompt_text)
        num_text = 0

        def piece_tokens() -> Iterator[torch.Tensor]:
            nonlocal num_text
            for piece in text_pieces:
                ids = self.frontend.piece_tokens(piece)
                num_text += len(ids)
                yield torch.tensor(ids, dtype=torch.int32)

        sampler = RASSampler(self.cfg.llm.sampling, seed)
        session = self.token2wav.session(prompt, seed, hop_policy)
        tokens = self.llm.generate_bistream(piece_tokens(), *self._prompt_tensors(prompt, llm_prompt), sampler)
        token_filter = self.family.speech_token_filter()
        for count, token in enumerate(tokens):
            # the model decodes until eos once the text has ended; cap it as the offline path does (20 x text)
            if count >= speech_token_bounds(num_text)[1]:
                break
            if token_filter is None or token_filter.keep(token):
                yield from session.feed([token])
        yield session.finish()

    def _prompt_tensors(self, prompt: Prompt, llm_prompt: LLMPrompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt text tokens [1,Lp], prompt speech tokens [1,P] or [1,0] when the mode leaves them out of the
        LLM) as int32 on the LM's device."""
        speech = prompt.speech_tokens if llm_prompt.uses_prompt_speech else prompt.speech_tokens[:0]
        return (torch.from_numpy(prompt.text_tokens)[None].to(self.device),
                torch.from_numpy(np.ascontiguousarray(speech))[None].to(self.device))
