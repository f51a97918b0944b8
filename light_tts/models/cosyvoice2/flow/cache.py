"""Per-request streaming state of the flow: encoder and estimator keys/values and conv context, so a chunk is
computed from its own tokens only.

Why this equals upstream's full-prefix recompute for non-final chunks: every layer of the flow is either
pointwise in time, a left-padded (causal) convolution, the lookahead conv (whose 3 future tokens arrive with the
chunk as context), or attention under a static chunk mask in which a position sees all earlier chunks and its
own chunk. Chunks end on multiples of 25 tokens (50 frames), and the CFM noise is a fixed tensor indexed by
absolute frame, so the frames of finished chunks never change when tokens are appended; their keys/values and
the last inputs of each causal conv are all the next chunk needs.

Layout (batch dim kept so an engine can stack the states of requests with equal chunk shapes):
  encoder keys/values      (B, heads, tokens or frames, head_dim), one pair per conformer block;
  estimator keys/values    (blocks, 2, 2B, heads, frames, head_dim) per CFM step, CFG branch first
                           (rows [0, B) conditioned, [B, 2B) unconditioned);
  conv tails               the last kernel-1 inputs of each causal conv, (B or 2B, channels, kernel - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncoderCache:
    """UpsampleConformerEncoder context: all tokens before `num_tokens` are final."""

    lookahead_tail: torch.Tensor  # (B, D, 2): the lookahead conv1 outputs of the last 2 tokens (conv2 context)
    upsample_tail: torch.Tensor  # (B, D, 4): the last 4 upsampled frames (the up conv's left context)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # token-rate blocks: (B, H, tokens, d_k) each
    up_kv: list[tuple[torch.Tensor, torch.Tensor]]  # frame-rate blocks: (B, H, 2 * tokens, d_k) each

    @property
    def num_tokens(self) -> int:
        return self.kv[0][0].shape[2]


@dataclass
class EstimatorCache:
    """Context of one estimator call (one CFM step, both CFG branches); conv slots follow the estimator's order."""

    # Packed so that stacking requests into a batch, or copying into CUDA-graph buffers, is one op per tensor.
    conv_tails: torch.Tensor  # (2B, sum of C_in, 2): the causal convs' tails side by side, in slot order
    kv: torch.Tensor  # (transformer blocks, 2 [keys, values], 2B, heads, frames, head_dim)

    @property
    def num_frames(self) -> int:
        return self.kv.shape[4]


@dataclass
class FlowStreamState:
    """One request's flow state between chunks; the prompt is encoded together with the first chunk."""

    spks: torch.Tensor  # (B, 80): normalised speaker embedding after the affine layer
    prompt_token: torch.Tensor  # (B, P) int
    prompt_feat: torch.Tensor  # (B, 2P, 80): the CFM condition of the prompt frames
    encoder: EncoderCache
    estimator: list[EstimatorCache]  # one per CFM step
    # (B,) int64 tokens of left padding in every cache of a batch stacked from requests of different lengths
    # (frame-rate caches hold twice as many); None when every row's cache is real
    num_pad: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens (prompt included) whose mel frames are final; the padded length in a stacked batch."""
        return self.encoder.num_tokens
