"""Stacks per-request flow and HiFT states into one batch and splits the results back, so that chunks of many
requests run as single batched passes.

Flow caches of different lengths are left-padded to the longest (the flow masks the pad slots: see
FlowStreamState.num_pad); every cache length is a multiple of the 25-token chunk, so the pads are too and each
row's chunk mask is the batch's mask shifted. Split states are views into the batched result (no copy). The
engine splits a batch only when its requests part (engine.FlowBatch): while they keep running together, the
batched state is reused as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from light_tts.models.flow.cache import EncoderCache, EstimatorCache, FlowStreamState
from light_tts.models.hift.streaming import HiFTStreamState


def _left_pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0 after left-padding dim 2 with zeros to the longest."""
    length = max(t.shape[2] for t in tensors)
    return torch.cat([F.pad(t, (0, 0, length - t.shape[2], 0)) for t in tensors])


def _stack_estimator(caches: list[EstimatorCache], num_pad: list[int]) -> EstimatorCache:
    """Per-request caches (2 rows each: conditioned, unconditioned) -> one cache of 2B rows ordered [all
    conditioned, all unconditioned] (the CFM's batch layout), keys/values left-padded by num_pad frames."""
    b = len(caches)
    kv0, tails0 = caches[0].kv, caches[0].conv_tails
    # zeros: pad slots are masked, but must be finite (0 * inf would still poison the attention output)
    num_frames = max(c.num_frames for c in caches)
    kv = kv0.new_zeros(kv0.shape[0], kv0.shape[1], 2 * b, kv0.shape[3], num_frames, kv0.shape[5])
    tails = tails0.new_empty(2 * b, *tails0.shape[1:])
    kv_rows = kv.view(*kv.shape[:2], 2, b, *kv.shape[3:])  # (blocks, 2, cfg branch, request, H, frames, hd)
    tail_rows = tails.view(2, b, *tails.shape[1:])
    for r, (cache, pad) in enumerate(zip(caches, num_pad)):
        kv_rows[:, :, :, r, :, pad:] = cache.kv  # (blocks, 2, cfg branch, H, frames, hd)
        tail_rows[:, r] = cache.conv_tails
    return EstimatorCache(conv_tails=tails, kv=kv)


def _right_pad_cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    length = max(t.shape[dim] for t in tensors)
    padded = []
    for t in tensors:
        widths = [0, 0] * (t.dim() - dim - 1) + [0, length - t.shape[dim]]
        padded.append(F.pad(t, widths))
    return torch.cat(padded)


def stack_flow_states(states: list[FlowStreamState], ratio: int) -> FlowStreamState:
    """One batched state from single-request states (B=1 each; conditioned estimator rows first). `ratio` is
    mel frames per token (frame-rate caches hold `ratio` slots per token)."""
    if len(states) == 1:
        return states[0]
    lengths = torch.tensor([s.num_tokens for s in states])
    num_pad = lengths.max() - lengths
    encoder = EncoderCache(
        lookahead_tail=torch.cat([s.encoder.lookahead_tail for s in states]),
        upsample_tail=torch.cat([s.encoder.upsample_tail for s in states]),
        kv=[(_left_pad_cat([s.encoder.kv[i][0] for s in states]), _left_pad_cat([s.encoder.kv[i][1] for s in states]))
            for i in range(len(states[0].encoder.kv))],
        up_kv=[(_left_pad_cat([s.encoder.up_kv[i][0] for s in states]),
                _left_pad_cat([s.encoder.up_kv[i][1] for s in states]))
               for i in range(len(states[0].encoder.up_kv))])
    frame_pad = [int(p) * ratio for p in num_pad]
    estimator = [_stack_estimator([s.estimator[step] for s in states], frame_pad)
                 for step in range(len(states[0].estimator))]
    device = states[0].spks.device
    return FlowStreamState(
        spks=torch.cat([s.spks for s in states]),
        # right zero pad: the prompt condition is zero after a row's prompt frames anyway
        prompt_token=_right_pad_cat([s.prompt_token for s in states], dim=1),
        prompt_feat=_right_pad_cat([s.prompt_feat for s in states], dim=1),
        encoder=encoder, estimator=estimator,
        num_pad=num_pad.to(device) if bool(num_pad.any()) else None)


def split_flow_state(batched: FlowStreamState, originals: list[FlowStreamState], ratio: int) -> list[FlowStreamState]:
    """Each row of a batched state after a chunk, as a single-request state (views, left pad dropped).
    `ratio` is mel frames per token (frame-rate caches hold `ratio` slots per token)."""
    if len(originals) == 1:
        return [batched]
    pads = [0] * len(originals) if batched.num_pad is None else batched.num_pad.tolist()
    return [split_row(batched, orig, r, len(originals), pad, ratio)
            for r, (orig, pad) in enumerate(zip(originals, pads))]


def split_row(batched: FlowStreamState, orig: FlowStreamState, r: int, b: int, pad: int,
              ratio: int) -> FlowStreamState:
    """Row r of a batched state of b rows whose caches carry `pad` tokens of left padding in that row, as a
    single-request state (views); `orig` gives the request's own speaker and prompt."""
    enc = batched.encoder
    encoder = EncoderCache(
        lookahead_tail=enc.lookahead_tail[r:r + 1], upsample_tail=enc.upsample_tail[r:r + 1],
        kv=[(k[r:r + 1, :, pad:], v[r:r + 1, :, pad:]) for k, v in enc.kv],
        up_kv=[(k[r:r + 1, :, pad * ratio:], v[r:r + 1, :, pad * ratio:]) for k, v in enc.up_kv])
    estimator = []
    for c in batched.estimator:  # rows r and b + r of each, as a 2-row cache
        kv = c.kv.view(*c.kv.shape[:2], 2, b, *c.kv.shape[3:])[:, :, :, r, :, pad * ratio:]
        estimator.append(EstimatorCache(conv_tails=c.conv_tails.view(2, b, *c.conv_tails.shape[1:])[:, r], kv=kv))
    return FlowStreamState(spks=orig.spks, prompt_token=orig.prompt_token, prompt_feat=orig.prompt_feat,
                           encoder=encoder, estimator=estimator)


def stack_hift_states(states: list[HiFTStreamState]) -> HiFTStreamState:
    """All states of a batch are fresh (None) or all carry their overlap (equal shapes)."""
    if states[0].mel is None:
        return HiFTStreamState()
    return HiFTStreamState(mel=torch.cat([s.mel for s in states]), source=torch.cat([s.source for s in states]),
                           speech=torch.cat([s.speech for s in states]))


def split_hift_state(batched: HiFTStreamState, num_rows: int) -> list[HiFTStreamState]:
    if batched.mel is None:
        return [HiFTStreamState() for _ in range(num_rows)]
    return [HiFTStreamState(mel=batched.mel[r:r + 1], source=batched.source[r:r + 1],
                            speech=batched.speech[r:r + 1]) for r in range(num_rows)]
