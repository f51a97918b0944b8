"""The CosyVoice2 flow (upstream CausalMaskedDiffWithXvec): speech tokens + prompt mel + speaker -> mel frames.

Two ways to run it:
- `inference(...)`: upstream's call, over the prompt and every token so far (full attention when
  streaming=False, static chunk masks when streaming=True), cost growing with the prefix.
- `stream_start` / `stream_chunk`: a per-request cache (cache.py), each chunk computed from its own tokens.
  A non-final chunk equals `inference(all tokens so far, streaming=True, finalize=False)` from the previous
  offset on (to float rounding).
- The final chunk differs. `stream_chunk(..., finalize=True)` computes it chunk-causally from the cache at
  constant cost; it equals `inference(all tokens, streaming=True, finalize=True)` from the offset on. Upstream
  instead runs the final chunk as `inference(all tokens, streaming=False, finalize=True)`: full attention over
  the whole utterance, so the prefix is re-encoded as if all of it were seen at once (its keys/values differ
  from the cached ones) and the cost grows with length. Callers wanting upstream's exact final chunk call that
  and keep the frames from the offset on. On the tiny fixture (random weights, 42-token final chunk after 138
  streamed tokens) the two final chunks differ by 0.12 relative L2; test_flow_cache.py prints the figure.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.model_config import FlowConfig
from light_tts.models.cosyvoice2.flow.cache import FlowStreamState
from light_tts.models.cosyvoice2.flow.cfm import CausalConditionalCFM
from light_tts.models.cosyvoice2.flow.encoder import UpsampleConformerEncoder
from light_tts.models.weights import load_strict, read_state_dict


class Flow(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = CausalConditionalCFM(cfg.cfm)

    @classmethod
    def from_checkpoint(cls, cfg: FlowConfig, path: Path) -> Flow:
        flow = cls(cfg)
        load_strict(flow, read_state_dict(Path(path)), str(path))
        return flow.eval()

    def _speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def chunk_mel(self, tokens: torch.Tensor, finalize: bool, state: FlowStreamState, streaming: bool) -> torch.Tensor:
        """Runs tokens (B, n [+ lookahead]) after the cached ones; updates `state`; returns their mel (B, 80, 2n).
        The batched entry point: `state` may stack several requests (state.num_pad gives each row's cache
        padding); the first chunk (the one carrying the prompt) must have an empty cache, as the prompt
        condition is read from frame `start` on."""
        emb = self.input_embedding(tokens.clamp(min=0).long())
        lookahead = 0 if finalize else self.cfg.pre_lookahead_len
        xs, context = emb[:, :emb.shape[1] - lookahead], emb[:, emb.shape[1] - lookahead:]
        start_frame = state.num_tokens * self.cfg.token_mel_ratio
        num_pad = state.num_pad
        h, state.encoder = self.encoder(xs, context, state.encoder, streaming, num_pad)
        mu = self.encoder_proj(h).transpose(1, 2)  # (B, 80, m)
        # the condition is the prompt mel on prompt frames and zero after it
        cond = state.prompt_feat[:, start_frame:start_frame + mu.shape[2]].transpose(1, 2).to(mu.dtype)
        cond = F.pad(cond, (0, mu.shape[2] - cond.shape[2]))
        frame_pad = None if num_pad is None else num_pad * self.cfg.token_mel_ratio
        mel, state.estimator = self.decoder(mu, state.spks, cond, state.estimator, streaming, frame_pad)
        return mel

    def _fresh_state(self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor,
                     embedding: torch.Tensor) -> FlowStreamState:
        b = prompt_token.shape[0]
        return FlowStreamState(
            spks=self._speaker(embedding), prompt_token=prompt_token, prompt_feat=prompt_feat,
            encoder=self.encoder.empty_cache(b), estimator=self.decoder.empty_caches(b))

    @torch.inference_mode()
    def inference(self, token: torch.Tensor, prompt_token: torch.Tensor, prompt_feat: torch.Tensor,
                  embedding: torch.Tensor, streaming: bool, finalize: bool) -> torch.Tensor:
        """Upstream's flow call. token (1, N) int, prompt_token (1, P), prompt_feat (1, 2P, 80), embedding
        (1, 192) -> mel (1, 80, 2N) of the tokens after the prompt (2(N-3) when finalize is False: the last 3
        tokens are lookahead context only)."""
        state = self._fresh_state(prompt_token, prompt_feat, embedding)
        mel = self.chunk_mel(torch.cat([prompt_token, token], dim=1), finalize, state, streaming)
        return mel[:, :, prompt_feat.shape[1]:]

    @torch.inference_mode()
    def stream_start(self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor,
                     embedding: torch.Tensor) -> FlowStreamState:
        """A request's empty cache; the prompt is encoded with the first chunk (its last partial 25-token chunk
        attends to the first hop's tokens, so it cannot be finished alone)."""
        if prompt_feat.shape[1] != prompt_token.shape[1] * self.cfg.token_mel_ratio:
            raise ValueError(f"prompt_feat has {prompt_feat.shape[1]} frames for {prompt_token.shape[1]} tokens")
        return self._fresh_state(prompt_token, prompt_feat, embedding)

    @torch.inference_mode()
    def stream_chunk(self, state: FlowStreamState, new_tokens: torch.Tensor, finalize: bool) -> torch.Tensor:
        """new_tokens (1, n + 3 lookahead), or (1, n) when finalize -> mel (1, 80, 2n) of those n tokens.
        A non-final chunk must end on a chunk boundary (prompt + tokens so far a multiple of 25)."""
        is_first = state.num_tokens == 0
        tokens = torch.cat([state.prompt_token, new_tokens], dim=1) if is_first else new_tokens
        num_new = tokens.shape[1] - (0 if finalize else self.cfg.pre_lookahead_len)
        chunk = self.cfg.encoder.static_chunk_size
        if finalize and num_new == 0 and not is_first:  # the stream ended on a chunk boundary
            return state.spks.new_zeros(tokens.shape[0], self.cfg.output_size, 0)
        if num_new <= 0 or (not finalize and (state.num_tokens + num_new) % chunk):
            raise ValueError(f"non-final chunks must end on a {chunk}-token boundary: {state.num_tokens} cached "
                             f"+ {num_new} new tokens")
        mel = self.chunk_mel(tokens, finalize, state, streaming=True)
        return mel[:, :, state.prompt_feat.shape[1]:] if is_first else mel
