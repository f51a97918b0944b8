"""The CosyVoice2 flow (upstream CausalMaskedDiffWithXvec): speech tokens + prompt mel + speaker -> mel frames.

Two ways to run it (the driver is ChunkedFlow, models/chunked_flow.py):
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

import torch
from torch import nn

from light_tts.model_config import FlowConfig
from light_tts.models.cfm import CausalConditionalCFM
from light_tts.models.chunked_flow import ChunkedFlow
from light_tts.models.cosyvoice2.flow.cache import FlowStreamState
from light_tts.models.cosyvoice2.flow.encoder import UpsampleConformerEncoder
from light_tts.models.cosyvoice2.flow.estimator import CausalConditionalDecoder


class Flow(ChunkedFlow):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = CausalConditionalCFM(
            cfg.cfm, CausalConditionalDecoder(cfg.cfm.estimator), cfg.cfm.estimator.out_channels
        )

    @property
    def chunk_tokens(self) -> int:
        return self.cfg.encoder.static_chunk_size

    def chunk_mel(self, tokens: torch.Tensor, finalize: bool, state: FlowStreamState, streaming: bool) -> torch.Tensor:
        """Runs tokens (B, n [+ lookahead]) after the cached ones; updates `state`; returns their mel (B, 80, 2n).
        The batched entry point: `state` may stack several requests (state.num_pad gives each row's cache
        padding); the first chunk (the one carrying the prompt) must have an empty cache, as the prompt
        condition is read from frame `start` on."""
        emb = self.input_embedding(tokens.clamp(min=0).long())
        lookahead = 0 if finalize else self.cfg.pre_lookahead_len
        xs, context = emb[:, : emb.shape[1] - lookahead], emb[:, emb.shape[1] - lookahead :]
        start_frame = state.num_tokens * self.cfg.token_mel_ratio
        num_pad = state.num_pad
        h, state.encoder = self.encoder(xs, context, state.encoder, streaming, num_pad)
        mu = self.encoder_proj(h).transpose(1, 2)  # (B, 80, m)
        frame_pad = None if num_pad is None else num_pad * self.cfg.token_mel_ratio
        mel, state.estimator = self.decoder(
            mu, state.spks, self.condition(state, start_frame, mu), state.estimator, streaming, frame_pad
        )
        return mel

    def _fresh_state(
        self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor, embedding: torch.Tensor
    ) -> FlowStreamState:
        b = prompt_token.shape[0]
        return FlowStreamState(
            spks=self._speaker(embedding),
            prompt_token=prompt_token,
            prompt_feat=prompt_feat,
            encoder=self.encoder.empty_cache(b),
            estimator=self.decoder.empty_caches(b),
        )
