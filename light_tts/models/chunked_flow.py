"""Upstream's flow call and the per-request chunked (streaming) driver around a family's flow, which supplies
`chunk_mel` (tokens after the cached ones -> their mel, updating its state) and `_fresh_state` (an empty cache).

A non-final chunk must end on an attention-chunk boundary (prompt + tokens so far a multiple of `chunk_tokens`):
then every later token leaves its frames unchanged (causal convs, static chunk masks, fixed noise), so the cached
keys/values and conv tails are all the next chunk needs. The families' module docs say why for each flow.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.models.weights import load_strict, read_state_dict


class ChunkedFlow(nn.Module):
    cfg: object  # the family's flow config: vocab_size, output_size, token_mel_ratio, pre_lookahead_len

    @classmethod
    def from_checkpoint(cls, cfg, path: Path):
        flow = cls(cfg)
        load_strict(flow, read_state_dict(Path(path)), str(path))
        return flow.eval()

    @property
    def chunk_tokens(self) -> int:
        raise NotImplementedError

    def chunk_mel(self, tokens: torch.Tensor, finalize: bool, state, streaming: bool) -> torch.Tensor:
        raise NotImplementedError

    def _fresh_state(self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor, embedding: torch.Tensor):
        raise NotImplementedError

    def _speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    @staticmethod
    def condition(state, start_frame: int, mu: torch.Tensor) -> torch.Tensor:
        """(B, 80, m): the prompt mel on the prompt's frames among [start_frame, +m), zero after it."""
        cond = state.prompt_feat[:, start_frame : start_frame + mu.shape[2]].transpose(1, 2).to(mu.dtype)
        return F.pad(cond, (0, mu.shape[2] - cond.shape[2]))

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        streaming: bool,
        finalize: bool,
    ) -> torch.Tensor:
        """Upstream's flow call. token (1, N) int, prompt_token (1, P), prompt_feat (1, 2P, 80), embedding
        (1, 192) -> mel (1, 80, 2N) of the tokens after the prompt (2(N-3) when finalize is False: the last 3
        tokens are lookahead context only)."""
        state = self._fresh_state(prompt_token, prompt_feat, embedding)
        mel = self.chunk_mel(torch.cat([prompt_token, token], dim=1), finalize, state, streaming)
        return mel[:, :, prompt_feat.shape[1] :]

    @torch.inference_mode()
    def stream_start(self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor, embedding: torch.Tensor):
        """A request's empty cache; the prompt is computed with the first chunk (its last partial chunk attends to
        the first hop's tokens, so it cannot be finished alone)."""
        if prompt_feat.shape[1] != prompt_token.shape[1] * self.cfg.token_mel_ratio:
            raise ValueError(f"prompt_feat has {prompt_feat.shape[1]} frames for {prompt_token.shape[1]} tokens")
        return self._fresh_state(prompt_token, prompt_feat, embedding)

    @torch.inference_mode()
    def stream_chunk(self, state, new_tokens: torch.Tensor, finalize: bool) -> torch.Tensor:
        """new_tokens (1, n + 3 lookahead), or (1, n) when finalize -> mel (1, 80, 2n) of those n tokens.
        A non-final chunk must end on a chunk boundary (prompt + tokens so far a multiple of chunk_tokens)."""
        is_first = state.num_tokens == 0
        tokens = torch.cat([state.prompt_token, new_tokens], dim=1) if is_first else new_tokens
        num_new = tokens.shape[1] - (0 if finalize else self.cfg.pre_lookahead_len)
        chunk = self.chunk_tokens
        if finalize and num_new == 0 and not is_first:  # the stream ended on a chunk boundary
            return state.spks.new_zeros(tokens.shape[0], self.cfg.output_size, 0)
        if num_new <= 0 or (not finalize and (state.num_tokens + num_new) % chunk):
            raise ValueError(
                f"non-final chunks must end on a {chunk}-token boundary: {state.num_tokens} cached "
                f"+ {num_new} new tokens"
            )
        mel = self.chunk_mel(tokens, finalize, state, streaming=True)
        return mel[:, :, state.prompt_feat.shape[1] :] if is_first else mel
