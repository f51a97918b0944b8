"""Offline Orpheus synthesis in one process: the reference that the server's Orpheus output is tested against.

text + voice -> sentences -> prompt ids -> the plain-torch Llama (one request, its own KV cache) sampled with the
same counter-based draws as the engine -> frames -> SNAC windows decoded one at a time with the engine's noise ->
24 kHz audio. Sentence k is seeded with sentence_seed(seed, k), as the server does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from light_tts.decode.snac.snac_engine import load_snac
from light_tts.decode.snac.snac_runner import decode_rows
from light_tts.families.orpheus import check_complete, prompt_layout
from light_tts.frontend.orpheus_frontend import OrpheusFrontend
from light_tts.llm.nucleus_sampler import sample_one
from light_tts.models.orpheus.config import load_model_config, load_tokenizer
from light_tts.models.orpheus.frames import FrameIds, FrameParser, WindowSchedule
from light_tts.models.orpheus.lm import generate, load_causal_lm
from light_tts.models.weights import read_safetensors
from light_tts.request_rules import sentence_seed


class OrpheusPipeline:
    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        check_complete(model_dir)
        tokenizer = load_tokenizer(Path(model_dir))
        self.cfg = load_model_config(model_dir, tokenizer)
        self.device = torch.device(device)
        self.frontend = OrpheusFrontend(self.cfg, tokenizer)
        self.layout = prompt_layout(self.cfg)
        self.lm = load_causal_lm(self.cfg.body, read_safetensors(self.cfg.model_dir)).to(self.device)
        self.snac = load_snac(self.cfg).to(self.device)
        t = self.cfg.tokens
        self.frame_ids = FrameIds(t.first_audio, t.codebook_size, t.frame_len)

    def speech_tokens(
        self, prompt_ids: list[int], seed: int, min_len: int = 0, max_len: int | None = None
    ) -> Iterator[int]:
        """The ids one sentence generates (stop excluded), sampled as the engine samples them."""
        max_len = self.cfg.max_new_tokens if max_len is None else max_len

        sampled_range = self.layout.sampled_range()

        def sample(logits: torch.Tensor, decoded: list[int]) -> int:
            allowed = self.layout.allowed_ids(len(decoded), min_len)
            return sample_one(self.cfg.sampling, logits, decoded, allowed, seed, first=sampled_range[0])

        yield from generate(self.lm, prompt_ids, sample, self.layout.stop_ids, max_len, sampled_range)

    @torch.inference_mode()
    def audio(self, token_ids: list[int], seed: int) -> Iterator[np.ndarray]:
        """The float32 chunks of one sentence's ids, window by window as the decode engine emits them."""
        parser, schedule = FrameParser(self.frame_ids), WindowSchedule()
        frames = parser.feed(token_ids)
        schedule.add_frames(len(frames), is_last=True)
        spf = self.cfg.snac.samples_per_frame
        while (w := schedule.next_window()) is not None:
            rows = torch.tensor([frames[w.start : w.end]], dtype=torch.int64, device=self.device)
            out = (
                decode_rows(
                    self.snac,
                    rows,
                    torch.tensor([seed & (2**63 - 1)], device=self.device),
                    torch.tensor([w.end], device=self.device),
                    torch.float32,
                )[0]
                .cpu()
                .numpy()
            )
            yield out[(w.emit_from - w.start) * spf : (w.emit_to - w.start) * spf]

    def synthesize(
        self, text: str, voice: str, stream: bool = False, seed: int = 0, fixed_tokens: int | None = None
    ) -> Iterator[np.ndarray]:
        """Float32 24 kHz audio: one array per sentence, or per window when `stream`."""
        voice = self.frontend.check_voice(voice)
        for index, sentence in enumerate(self.frontend.split(text)):
            s = sentence_seed(seed, index)
            ids = list(
                self.speech_tokens(self.frontend.prompt_ids(sentence, voice), s, fixed_tokens or 0, fixed_tokens)
            )
            chunks = list(self.audio(ids, s))
            if stream:
                yield from chunks
            else:
                yield np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
