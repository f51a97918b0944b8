"""Offline synthesis in one process, in every mode: the reference that the server's output is tested against.

text + prompt wav (+ its transcript, or an instruction) -> frontend -> the family's LLM prompt for the mode ->
speech-token LM (one sentence at a time) -> the family's token filter -> token2wav -> 24 kHz audio. Voice
conversion: a source recording's speech tokens -> token2wav with the target voice's prompt. Everything
model-specific comes from the directory's family (families/): its frontend, the LLM prompt of the mode, its offline
LM, the filter between LM and codec, its codec.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from light_tts.families import family_of
from light_tts.families.base import filtered
from light_tts.families.modes import llm_prompt_tokens
from light_tts.frontend.frontend import Prompt
from light_tts.request_rules import (
    MAX_SPEECH_TOKENIZER_SECONDS,
    check_speed,
    resolve_mode,
    sentence_seed,
    speech_token_bounds,
)
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

    def speech_tokens(
        self,
        text_tokens: list[int],
        prompt: Prompt,
        seed: int,
        fixed_speech_tokens: int | None = None,
        counted_prompt_tokens: int = 0,
    ) -> Iterator[int]:
        """Speech tokens of one sentence, sampled with RAS from the request's seed, as the codec gets them (the
        family's filter applied); `prompt` is the LLM's (its text tokens and speech tokens as the mode has them,
        see llm_prompt). `fixed_speech_tokens`: exactly that many (the server's benchmark option: no stop before,
        none after). `counted_prompt_tokens`: prompt tokens counted in the length bounds (counts_in_length)."""
        min_len, max_len = speech_token_bounds(len(text_tokens) + counted_prompt_tokens)
        if fixed_speech_tokens is not None:
            min_len = max_len = fixed_speech_tokens
        sampler = RASSampler(self.cfg.llm.sampling, seed)
        tokens = self.llm.generate(
            torch.tensor([text_tokens], dtype=torch.int32, device=self.device),
            *self._prompt_tensors(prompt),
            sampler,
            min_len,
            max_len,
        )
        return filtered(tokens, self.family.speech_token_filter())

    def llm_prompt(self, prompt: Prompt, mode: str, transcript: str | None, instruction: str | None) -> Prompt:
        """The voice prompt as the LLM sees it in `mode`, built by the model's family (the flow always takes the
        voice prompt as it is)."""
        built = self.family.llm_prompt(mode, transcript or "", instruction or "")
        text_tokens, speech_tokens = llm_prompt_tokens(built, prompt, self.frontend.prompt_text_tokens)
        return Prompt(text_tokens=text_tokens, speech_tokens=speech_tokens, embedding=prompt.embedding, mel=prompt.mel)

    def counted_prompt_tokens(self, llm_prompt: Prompt, mode: str) -> int:
        """The LLM prompt's text tokens that count toward a sentence's length bounds in this mode (CosyVoice3's
        cross-lingual system text, as upstream's text carries it), else 0."""
        return len(llm_prompt.text_tokens) if self.family.prompt_counts_in_length(mode) else 0

    def encode(
        self, prompt_wav: bytes, prompt_text: str | None, mode: str | None, instruction: str | None
    ) -> tuple[Prompt, Prompt]:
        """(the LLM's prompt, the flow's prompt) of a request; `mode` None: as its inputs say (resolve_mode)."""
        mode = resolve_mode(mode, instruction, prompt_text)
        prompt = self.frontend.encode_prompt(prompt_wav, "")
        return self.llm_prompt(prompt, mode, prompt_text, instruction), prompt

    def synthesize(
        self,
        text: str,
        prompt_wav: bytes,
        prompt_text: str | None,
        stream: bool = False,
        speed: float = 1.0,
        seed: int = 0,
        hop_policy: HopPolicy = HopPolicy(),
        exact_final: bool = False,
        mode: str | None = None,
        instruction: str | None = None,
        fixed_speech_tokens: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yields float32 audio: one array per sentence, or per streamed chunk when `stream`. `prompt_text` None (or
        blank): a voice without a transcript, spoken cross-lingual; `instruction`: instruct mode."""
        check_speed(speed, stream)
        sentences = self.frontend.normalize_and_split(text)  # text errors before the costly prompt encoding
        llm_prompt, prompt = self.encode(prompt_wav, prompt_text, mode, instruction)
        counted = self.counted_prompt_tokens(llm_prompt, resolve_mode(mode, instruction, prompt_text))
        for index, sentence in enumerate(sentences):
            s = sentence_seed(seed, index)
            tokens = self.speech_tokens(self.frontend.tokenize(sentence), llm_prompt, s, fixed_speech_tokens, counted)
            yield from self.token2wav_of(tokens, prompt, s, stream, speed, hop_policy, exact_final)

    def synthesize_bistream(
        self,
        text_pieces: Iterable[str],
        prompt_wav: bytes,
        prompt_text: str | None,
        seed: int = 0,
        hop_policy: HopPolicy = HopPolicy(),
        mode: str | None = None,
        instruction: str | None = None,
    ) -> Iterator[np.ndarray]:
        """Text arriving in pieces (e.g. from an LLM) -> streamed audio chunks of one utterance."""
        llm_prompt, prompt = self.encode(prompt_wav, prompt_text, mode, instruction)
        num_text = 0

        def piece_tokens() -> Iterator[torch.Tensor]:
            """Each piece's tokens, as the server's encode process sends them: a tag a piece cuts in two waits for
            the next piece, and a piece with no tokens is no turn of the LLM's loop over pieces."""
            nonlocal num_text
            joiner = self.frontend.piece_joiner()
            for text in chain(map(joiner.add, text_pieces), [None]):
                ids = self.frontend.piece_tokens(joiner.finish() if text is None else text)
                num_text += len(ids)
                if ids:
                    yield torch.tensor(ids, dtype=torch.int32)

        sampler = RASSampler(self.cfg.llm.sampling, seed)
        session = self.token2wav.session(prompt, seed, hop_policy)
        token_filter = self.family.speech_token_filter()
        tokens = self.llm.generate_bistream(piece_tokens(), *self._prompt_tensors(llm_prompt), sampler)
        for count, token in enumerate(tokens):
            # the model decodes until eos once the text has ended; cap it as the offline path does (20 x text)
            if count >= speech_token_bounds(num_text)[1]:
                break
            if token_filter is None or token_filter.keep(token):
                yield from session.feed([token])
        yield session.finish()

    def voice_conversion(
        self,
        source_wav: bytes,
        prompt_wav: bytes,
        stream: bool = False,
        speed: float = 1.0,
        seed: int = 0,
        hop_policy: HopPolicy = HopPolicy(),
        max_source_seconds: float = MAX_SPEECH_TOKENIZER_SECONDS,
    ) -> Iterator[np.ndarray]:
        """The source recording spoken in the prompt's voice (upstream's inference_vc): its speech tokens go
        straight to token2wav with the prompt's tokens, mel and speaker embedding; no LLM, no text."""
        check_speed(speed, stream)
        source_tokens, prompt = self.vc_inputs(source_wav, prompt_wav, max_source_seconds)
        yield from self.token2wav_of(source_tokens.tolist(), prompt, sentence_seed(seed, 0), stream, speed, hop_policy)

    def vc_inputs(
        self, source_wav: bytes, prompt_wav: bytes, max_source_seconds: float = MAX_SPEECH_TOKENIZER_SECONDS
    ) -> tuple[np.ndarray, Prompt]:
        """(the source's speech tokens, the flow's prompt) of a voice conversion (upstream's frontend_vc)."""
        source_tokens, _ = self.frontend.source_speech_tokens(source_wav, max_source_seconds)
        return source_tokens, self.frontend.encode_prompt(prompt_wav, "")

    def token2wav_of(
        self,
        tokens: Iterable[int],
        prompt: Prompt,
        seed: int,
        stream: bool,
        speed: float,
        hop_policy: HopPolicy,
        exact_final: bool = False,
    ) -> Iterator[np.ndarray]:
        """One sentence's audio: whole (a list of tokens), or streamed chunk by chunk as the tokens come."""
        if not stream:
            yield self.token2wav.offline(list(tokens), prompt, seed, speed)
            return
        session = self.token2wav.session(prompt, seed, hop_policy, exact_final)
        for token in tokens:
            yield from session.feed([token])
        yield session.finish()

    def _prompt_tensors(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt text tokens [1,Lp], prompt speech tokens [1,P]) as int32 on the LM's device (copies: the
        frontend's cached token arrays are read-only)."""
        return (
            torch.tensor(prompt.text_tokens)[None].to(self.device),
            torch.tensor(prompt.speech_tokens)[None].to(self.device),
        )
