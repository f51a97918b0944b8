"""The CosyVoice3 flow (upstream CausalMaskedDiffWithDiT): speech tokens + prompt mel + speaker -> mel frames.

No conformer encoder: token embedding (80-d) -> pre-lookahead layer (80 -> 1024 -> 80, 3 tokens ahead) -> each
token repeated twice (50 Hz) = mu; the CFM (fixed noise, 10 Euler steps, CFG 0.7) runs the DiT estimator on
[x, cond, mu, spks]. `inference` is upstream's call; `stream_start` / `stream_chunk` (ChunkedFlow) keep a cache.

Why a cached chunk equals upstream's full-prefix recompute: the lookahead conv sees the 3 tokens after a chunk
(they arrive with it as context), its second conv is causal; the DiT's positional convs are causal; attention is
block-causal with 50-frame (25-token) blocks counted from frame 0, and chunks end on block boundaries; the CFM noise
is a fixed tensor indexed by absolute frame. So finished frames never change when tokens are appended (fixture:
chunk 0 equals the same frames of a full streaming run to 1.9e-6), and their keys/values and conv tails are all
the next chunk needs. Upstream runs the final chunk with full attention over everything (streaming=False); the
sessions of token2wav.py can do the same (exact_final) or finish block-causally from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from light_tts.models.cfm import CausalConditionalCFM
from light_tts.models.chunked_flow import ChunkedFlow
from light_tts.models.cosyvoice3.config import DiTFlowConfig
from light_tts.models.cosyvoice3.flow.dit import DiT, DiTCache
from light_tts.models.pre_lookahead import PreLookaheadLayer


@dataclass
class DiTFlowState:
    """One request's flow state between chunks; the prompt is computed with the first chunk."""

    spks: torch.Tensor  # (B, 80): normalised speaker embedding after the affine layer
    prompt_token: torch.Tensor  # (B, P) int
    prompt_feat: torch.Tensor  # (B, 2P, 80): the CFM condition of the prompt frames
    lookahead_tail: torch.Tensor  # (B, channels, 2): the lookahead conv1's outputs of the last 2 tokens
    estimator: list[DiTCache]  # one per CFM step
    num_tokens: int = 0  # tokens (prompt included) whose frames are final
    num_pad: None = None  # (dense caches are never left-padded)


class DiTFlow(ChunkedFlow):
    def __init__(self, cfg: DiTFlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.pre_lookahead_layer = PreLookaheadLayer(
            cfg.input_size, cfg.pre_lookahead_len, hidden=cfg.pre_lookahead_channels
        )
        self.decoder = CausalConditionalCFM(cfg.cfm, DiT(cfg.estimator), cfg.output_size)

    @property
    def chunk_tokens(self) -> int:
        return self.cfg.estimator.static_chunk_size // self.cfg.token_mel_ratio

    def mu(self, tokens: torch.Tensor, finalize: bool, lookahead_tail: torch.Tensor):
        """tokens (B, n [+ 3 lookahead]) -> mu (B, 80, 2n) and the new lookahead tail."""
        emb = self.input_embedding(tokens.clamp(min=0).long())
        lookahead = 0 if finalize else self.cfg.pre_lookahead_len
        xs, context = emb[:, : emb.shape[1] - lookahead], emb[:, emb.shape[1] - lookahead :]
        h, tail = self.pre_lookahead_layer(xs, context, lookahead_tail)
        return h.repeat_interleave(self.cfg.token_mel_ratio, dim=1).transpose(1, 2), tail

    def chunk_mel(self, tokens: torch.Tensor, finalize: bool, state: DiTFlowState, streaming: bool) -> torch.Tensor:
        """Runs tokens (B, n [+ lookahead]) after the cached ones; updates `state`; returns their mel (B, 80, 2n)."""
        start_frame = state.num_tokens * self.cfg.token_mel_ratio
        mu, state.lookahead_tail = self.mu(tokens, finalize, state.lookahead_tail)
        mel, state.estimator = self.decoder(
            mu, state.spks, self.condition(state, start_frame, mu), state.estimator, streaming
        )
        state.num_tokens += mu.shape[2] // self.cfg.token_mel_ratio
        return mel

    def _fresh_state(
        self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor, embedding: torch.Tensor
    ) -> DiTFlowState:
        b = prompt_token.shape[0]
        tail = self.input_embedding.weight.new_zeros(b, self.cfg.pre_lookahead_channels, 2)
        return DiTFlowState(
            spks=self._speaker(embedding),
            prompt_token=prompt_token,
            prompt_feat=prompt_feat,
            lookahead_tail=tail,
            estimator=self.decoder.empty_caches(b),
        )
