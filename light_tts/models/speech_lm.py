"""The speech-token LM of the CosyVoice families (upstream Qwen2LM, and CosyVoice3LM which inherits its loops):
prompt layout, per-step log-probs, and the offline and bistream decode loops.

Offline input: [sos, embed_tokens(prompt_text + text), task_id, speech_embedding(prompt_speech)], then one
speech_embedding row per generated token. Speech ids 0..speech_token_size-1 are audio tokens; the special ids
after them differ by family and come from LLMConfig.ids (SpeechIds): CosyVoice2 has eos, an unused id and fill
(all three stop a decode), sos and task_id in a 2-row `llm_embedding`, and a head with a bias; CosyVoice3 has 200
special rows (sos 6561, eos 6562, task_id 6563, fill 6564; every one of them stops a decode), sos and task_id as
speech_embedding rows, and no head bias. What a step forbids before min_len is the family's MinLenRule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from light_tts.model_config import LLMConfig
from light_tts.models.qwen2 import KVCache, Qwen2ForCausalLM
from light_tts.models.weights import load_strict, read_state_dict
from light_tts.request_rules import speech_token_bounds
from light_tts.sampling import Sampler

SOS, TASK_ID = 0, 1  # rows of llm_embedding (families whose sos and task_id are not speech rows)


min_max_len = speech_token_bounds  # bounds on generated speech tokens from the text length (prompt text excluded)


class Qwen2Encoder(nn.Module):
    """Holds the Qwen2 model under `.model`, so the checkpoint's `llm.model.model.*` keys land where upstream has
    them."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.model = Qwen2ForCausalLM(cfg.qwen)


class SpeechLM(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.ids.sos_row is None:
            self.llm_embedding = nn.Embedding(2, cfg.llm_input_size)
        self.llm = Qwen2Encoder(cfg)
        self.llm_decoder = nn.Linear(cfg.llm_output_size, cfg.num_speech_rows, bias=cfg.ids.decoder_bias)
        self.speech_embedding = nn.Embedding(cfg.num_speech_rows, cfg.llm_input_size)

    @classmethod
    def from_checkpoint(cls, cfg: LLMConfig, path: Path) -> SpeechLM:
        # build without random init (meta tensors, then uninitialised memory): every value comes from the file
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device="cpu")
        load_strict(model, read_state_dict(Path(path)), str(path))
        return model.eval().requires_grad_(False)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.qwen.num_hidden_layers)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,) or (1, N) text token ids -> (1, N, H)."""
        embed_tokens = self.llm.model.model.embed_tokens
        return embed_tokens(tokens.reshape(1, -1).long().to(embed_tokens.weight.device))

    def embed_speech(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,) or (1, N) speech token ids -> (1, N, H)."""
        return self.speech_embedding(tokens.reshape(1, -1).long().to(self.speech_embedding.weight.device))

    def special_embedding(self, row: int) -> torch.Tensor:
        """(1, 1, H) of sos (SOS) or task_id (TASK_ID): an llm_embedding row, or the family's speech row."""
        speech_row = self.cfg.ids.sos_row if row == SOS else self.cfg.ids.task_row
        if speech_row is None:
            return self.llm_embedding.weight[row].view(1, 1, -1)
        return self.speech_embedding.weight[speech_row].view(1, 1, -1)

    def sample_next(
        self,
        sampler: Sampler,
        logprobs: torch.Tensor,
        decoded: list[int],
        forbid_stop: bool,
        forbid_every_stop: bool = False,
    ) -> int:
        """upstream's sampling_ids: while `forbid_stop` (before min_len, and in bistream text phases) the family's
        MinLenRule applies: a masked id, or ids from reject_from on drawn again. `forbid_every_stop` (before a
        fixed length) also masks the stop ids the rule lets through, as the engine's sampler does."""
        rule = self.cfg.ids.min_len
        stop_from = min(self.cfg.stop_token_ids)
        rule_end = logprobs.numel() if rule.reject_from is None else rule.reject_from
        if forbid_stop and (rule.masked_id is not None or (forbid_every_stop and rule_end > stop_from)):
            logprobs = logprobs.clone()
            if rule.masked_id is not None:
                logprobs[rule.masked_id] = -float("inf")
            if forbid_every_stop:
                logprobs[stop_from:rule_end] = -float("inf")
        return sampler.sample(logprobs, decoded, rule.reject_from if forbid_stop else None)

    def prompt_prefix_len(self, prompt_text_tokens: torch.Tensor) -> int:
        """Prompt text tokens that bistream feeds right after sos (through LLMConfig.prompt_end_text_id, as
        upstream CosyVoice3LM does); 0: the whole prompt text is interleaved with the prompt speech."""
        end_id = self.cfg.prompt_end_text_id
        ids = prompt_text_tokens.reshape(-1).tolist()
        return ids.index(end_id) + 1 if end_id is not None and end_id in ids else 0

    def build_prefill_embeds(
        self, text_tokens: torch.Tensor, prompt_text_tokens: torch.Tensor, prompt_speech_tokens: torch.Tensor
    ) -> torch.Tensor:
        """(1, 1 + prompt_text + text + 1 + prompt_speech, H) offline LM input."""
        text = torch.cat([prompt_text_tokens.reshape(-1), text_tokens.reshape(-1)])
        parts = [self.special_embedding(SOS), self.embed_text(text), self.special_embedding(TASK_ID)]
        return torch.cat(parts + [self.embed_speech(prompt_speech_tokens)], dim=1)

    def step_logprobs(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """(..., H) last hidden state -> (..., num_speech_rows) log-probs of the next speech id."""
        return self.llm_decoder(hidden_last).log_softmax(dim=-1)

    def forward_step(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed (1, T, H) new embeddings through the decoder; (num_speech_rows,) log-probs after the last one."""
        hidden = self.llm.model.model(embeds, cache)
        return self.step_logprobs(hidden[0, -1])

    @torch.inference_mode()
    def generate(
        self,
        text_tokens: torch.Tensor,
        prompt_text_tokens: torch.Tensor,
        prompt_speech_tokens: torch.Tensor,
        sampler: Sampler,
        min_len: int | None = None,
        max_len: int | None = None,
    ) -> Iterator[int]:
        """Yield speech tokens until a stop id or max_len; before min_len tokens the family's MinLenRule applies.
        min_len = max_len given: exactly that many tokens (no stop id at all before), as the engine's fixed length."""
        is_fixed = min_len is not None and min_len == max_len
        default_min, default_max = min_max_len(text_tokens.numel())
        min_len = default_min if min_len is None else min_len
        max_len = default_max if max_len is None else max_len
        stop_ids = self.cfg.stop_token_ids
        cache = self.new_cache()
        embeds = self.build_prefill_embeds(text_tokens, prompt_text_tokens, prompt_speech_tokens)
        out: list[int] = []
        for step in range(max_len):
            logprobs = self.forward_step(embeds, cache)
            token = self.sample_next(sampler, logprobs, out, step < min_len, is_fixed and step < min_len)
            if token in stop_ids:
                return
            yield token
            out.append(token)
            embeds = self.embed_speech(torch.tensor([token]))

    @torch.inference_mode()
    def generate_bistream(
        self,
        text_pieces: Iterable[torch.Tensor],
        prompt_text_tokens: torch.Tensor,
        prompt_speech_tokens: torch.Tensor,
        sampler: Sampler,
        max_len: int | None = None,
    ) -> Iterator[int]:
        """Decode while text arrives in pieces, as upstream Qwen2LM.inference_bistream.

        Layout: [sos, 5 text, 15 prompt speech, 5 text, 15 prompt speech, ...] while prompt speech lasts (the prompt
        text is the first text), then 5 text tokens before every 15 generated tokens; fill is forced every 16th
        decoded id (it marks where the next 5 text tokens go and is never fed); when text ends the rest of the text
        and task_id follow and decoding runs to eos. Upstream has no length cap; `max_len` bounds yielded tokens.
        A family with a prompt end marker (CosyVoice3) has the prompt text up to it right after sos instead.
        Upstream raises on a special id other than fill in the text phases (and other than eos at the end); we end
        the stream there.
        """
        num_text, num_speech = self.cfg.mix_ratio
        fill, stop_ids = self.cfg.fill_token, self.cfg.stop_token_ids
        cache = self.new_cache()
        prefix = self.prompt_prefix_len(prompt_text_tokens)
        prompt_text_tokens = prompt_text_tokens.reshape(-1)
        # (1, T, H) embeddings not yet fed, except as noted below
        pending = torch.cat([self.special_embedding(SOS), self.embed_text(prompt_text_tokens[:prefix])], dim=1)
        text_cache = self.embed_text(prompt_text_tokens[prefix:])
        prompt_speech = self.embed_speech(prompt_speech_tokens)
        num_prompt = prompt_speech.size(1)
        # the first fill comes once the last (partial) prompt block of 15 speech tokens is complete
        next_fill_index = (num_prompt // num_speech + 1) * num_speech - num_prompt
        out: list[int] = []  # decoded ids including fills: the RAS window sees them, as upstream
        num_yielded = 0
        for piece in text_pieces:
            text_cache = torch.cat([text_cache, self.embed_text(piece)], dim=1)
            while prompt_speech.size(1) > 0 and text_cache.size(1) >= num_text:
                pending = torch.cat([pending, text_cache[:, :num_text], prompt_speech[:, :num_speech]], dim=1)
                text_cache, prompt_speech = text_cache[:, num_text:], prompt_speech[:, num_speech:]
            if prompt_speech.size(1) > 0:
                continue
            needs_text = (len(out) > 0 and out[-1] == fill) or (len(out) == 0 and pending.size(1) == 1)
            if needs_text:
                if text_cache.size(1) < num_text:
                    continue
                # after a fill, `pending` (the last speech token) was already fed: replace it
                next_text = text_cache[:, :num_text]
                pending = next_text if out else torch.cat([pending, next_text], dim=1)
                text_cache = text_cache[:, num_text:]
            while True:
                logprobs = self.forward_step(pending, cache)
                if len(out) == next_fill_index:
                    token = fill
                    next_fill_index += num_speech + 1
                else:
                    token = self.sample_next(sampler, logprobs, out, True)
                out.append(token)
                if token == fill:
                    break
                if token in stop_ids:  # upstream raises ValueError here
                    return
                yield token
                num_yielded += 1
                if max_len is not None and num_yielded >= max_len:
                    return
                pending = self.embed_speech(torch.tensor([token]))
        # NOTE after a fill `pending` holds the last speech token, already in the cache; upstream feeds it again
        # here, and so do we, to decode the same tokens
        pending = torch.cat([pending, text_cache, self.special_embedding(TASK_ID)], dim=1)
        while max_len is None or num_yielded < max_len:
            logprobs = self.forward_step(pending, cache)
            token = sampler.sample(logprobs, out)
            out.append(token)
            if token in self.cfg.stop_token_ids:  # upstream raises on the unused id and fill here; we end the stream
                return
            yield token
            num_yielded += 1
            pending = self.embed_speech(torch.tensor([token]))
