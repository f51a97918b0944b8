"""Offline zero-shot synthesis in one process: the reference that the server's output is tested against.

text + prompt wav + prompt text -> frontend -> speech-token LM (one sentence at a time) -> token2wav -> 24 kHz audio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from light_tts.frontend.frontend import Frontend, Prompt
from light_tts.model_dir import check_complete, load_model_config
from light_tts.models.cosyvoice2.speech_lm import SpeechLM, min_max_len
from light_tts.request_rules import check_speed, sentence_seed
from light_tts.sampling import RASSampler
from light_tts.token2wav import HopPolicy, Token2Wav


class Pipeline:
    """Frontend, speech-token LM and token2wav of one model directory, on one device."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        check_complete(model_dir)
        self.cfg = load_model_config(model_dir)
        self.device = torch.device(device)
        self.frontend = Frontend(self.cfg)
        self.llm = SpeechLM.from_checkpoint(self.cfg.llm, self.cfg.path("llm.pt")).to(self.device).eval()
        self.token2wav = Token2Wav(self.cfg, self.device)

    def speech_tokens(self, text_tokens: list[int], prompt: Prompt, seed: int) -> Iterator[int]:
        """Speech tokens of one sentence, sampled with RAS from the request's seed."""
        min_len, max_len = min_max_len(len(text_tokens))
        sampler = RASSampler(self.cfg.llm.sampling, seed)
        yield from self.llm.generate(
            torch.tensor([text_tokens], dtype=torch.int32, device=self.device),
            *self._prompt_tensors(prompt), sampler, min_len, max_len)

    def synthesize(self, text: str, prompt_wav: bytes, prompt_text: str, stream: bool = False, speed: float = 1.0,
                   seed: int = 0, hop_policy: HopPolicy = HopPolicy(), exact_final: bool = False,
                   ) -> Iterator[np.ndarray]:
        """Yields float32 audio: one array per sentence, or per streamed chunk when `stream`."""
        check_speed(speed, stream)
        sentences = self.frontend.normalize_and_split(text)  # text errors before the costly prompt encoding
        prompt = self.frontend.encode_prompt(prompt_wav, prompt_text)
        for index, sentence in enumerate(sentences):
            s = sentence_seed(seed, index)
            tokens = self.speech_tokens(self.frontend.tokenize(sentence), prompt, s)
            if not stream:
                yield self.token2wav.offline(list(tokens), prompt, s, speed)
                continue
            session = self.token2wav.session(prompt, s, hop_policy, exact_final)
            for token in tokens:
                yield from session.feed([token])
            yield session.finish()

    def synthesize_bistream(self, text_pieces: Iterable[str], prompt_wav: bytes, prompt_text: str, seed: int = 0,
                            hop_policy: HopPolicy = HopPolicy()) -> Iterator[np.ndarray]:
        """Text arriving in pieces (e.g. from an LLM) -> streamed audio chunks of one utterance."""
        prompt = self.frontend.encode_prompt(prompt_wav, prompt_text)
        num_text = 0

        def piece_tokens() -> Iterator[torch.Tensor]:
            nonlocal num_text
            for piece in text_pieces:
                ids = self.frontend.piece_tokens(piece)
                num_text += len(ids)
                yield torch.tensor(ids, dtype=torch.int32)

        sampler = RASSampler(self.cfg.llm.sampling, seed)
        session = self.token2wav.session(prompt, seed, hop_policy)
        tokens = self.llm.generate_bistream(piece_tokens(), *self._prompt_tensors(prompt), sampler)
        for count, token in enumerate(tokens):
            # the model decodes until eos once the text has ended; cap it as the offline path does (20 x text)
            if count >= min_max_len(num_text)[1]:
                break
            yield from session.feed([token])
        yield session.finish()

    def _prompt_tensors(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt text tokens [1,Lp], prompt speech tokens [1,P]) as int32 on the LM's device."""
        return (torch.from_numpy(prompt.text_tokens)[None].to(self.device),
                torch.from_numpy(prompt.speech_tokens)[None].to(self.device))
