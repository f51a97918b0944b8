"""The decode bench's roofline: FLOP and byte counts of a flow pass and of HiFT, from the model's shapes, and the
achieved TFLOP/s and GB/s of a measured time against the GPU's peak.

Flow pass of R streams, each a chunk of N new tokens after C cached ones (all from the config's dimensions;
matmuls 2 M N K, attention 4 M ctx H D, the encoder's relative-position term 2 M ctx H D more):
- encoder: embeddings, lookahead convs, the conformer blocks at the token rate and the upsampled ones at the frame
  rate (both with their paged attention), the projection to the mel;
- estimator, times the CFM steps: on 2 (CFG) x 2 (frames per token) x R x N virtual rows, its resnets (two k=3
  convs and a 1x1), transformer blocks (QKV, attention over 2 (C + N) frames, out-projection, feed-forward),
  the down/up/final convs and the final projection.
Bytes are the compulsory DRAM traffic: the weights once per CFM step (the estimator's do not fit in L2), every
virtual row's cached keys and values read once per block and step, the new ones written. Activations are not
counted (what a fused pass keeps on chip), so GB/s is a lower bound of the traffic.

CosyVoice3's flow (dit_flow_*): no encoder; the pre-lookahead convs, then the DiT's blocks on the same virtual rows.

HiFT (either family's): torch's FLOP counter (from shapes) over one row's steady chunk, and the bytes every
convolution reads and writes (HiFT's activations are its traffic); times the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice3.flow.dit import CONV_POS_GROUPS, CONV_POS_KERNEL

# (dense fp16/bf16 tensor TFLOP/s, HBM TB/s) of the GPUs the bench runs on (vendor datasheets, SXM parts)
PEAKS = {"H200": (989.4, 4.8), "H100 PCIe": (756.0, 2.0), "H100": (989.4, 3.35)}
LAUNCH_FLOOR_S = 2e-6  # about what one kernel node of a CUDA graph costs at least on H100/H200 (an estimate)


def peak_of(device_name: str) -> tuple[float, float] | None:
    return next((v for k, v in PEAKS.items() if k in device_name), None)


def flow_flops(cfg: ModelConfig, rows: int, new_tokens: int, cached_tokens: int, lookahead: int = 3) -> float:
    enc, est_cfg, steps = cfg.flow.encoder, cfg.flow.cfm.estimator, cfg.flow.cfm.n_timesteps
    d, units, ratio = enc.output_size, enc.linear_units, cfg.flow.token_mel_ratio
    mt, mt_in = rows * new_tokens, rows * (new_tokens + lookahead)
    mf, ctx_t = ratio * mt, cached_tokens + new_tokens

    def conformer(m: int, ctx: int) -> float:  # QKV, out, FF, attention with the positional term
        return 2 * m * d * (4 * d + 2 * units) + 3 * 2 * m * ctx * d

    encoder = (
        2 * mt_in * enc.input_size * d
        + 2 * mt * d * d * (4 + 3)  # embed, lookahead convs k=4 and k=3
        + enc.num_blocks * conformer(mt, ctx_t)
        + 2 * mf * d * d * (2 * enc.upsample_stride + 1)
        + 2 * mf * d * d  # up conv, up embed
        + enc.num_up_blocks * conformer(mf, ratio * ctx_t)
        + 2 * mf * d * cfg.flow.output_size
    )
    c, inner, mv = est_cfg.channels[0], est_cfg.num_heads * est_cfg.attention_head_dim, 2 * mf
    ctx_f = ratio * ctx_t

    def resnet(cin: int) -> float:
        return 2 * mv * c * (3 * cin + 3 * c + cin)

    block = 2 * mv * c * (3 * inner + inner + 2 * 4 * c) + 4 * mv * ctx_f * inner
    num_stages = 2 + est_cfg.num_mid_blocks
    estimator = (
        resnet(est_cfg.in_channels)
        + est_cfg.num_mid_blocks * resnet(c)
        + resnet(2 * c)
        + num_stages * est_cfg.n_blocks * block
        + 3 * 2 * mv * 3 * c * c
        + 2 * mv * c * est_cfg.out_channels
    )
    return encoder + steps * estimator


def flow_bytes(
    cfg: ModelConfig,
    flow: torch.nn.Module,
    rows: int,
    new_tokens: int,
    cached_tokens: int,
    act_bytes: int,
    kv_bytes: int,
) -> float:
    est_cfg, enc, steps = cfg.flow.cfm.estimator, cfg.flow.encoder, cfg.flow.cfm.n_timesteps
    est_params = sum(p.numel() for p in flow.decoder.estimator.parameters())
    other_params = sum(p.numel() for p in flow.parameters()) - est_params - flow.input_embedding.weight.numel()
    ratio, inner = cfg.flow.token_mel_ratio, est_cfg.num_heads * est_cfg.attention_head_dim
    blocks = (2 + est_cfg.num_mid_blocks) * est_cfg.n_blocks
    ctx_f, new_f = ratio * (cached_tokens + new_tokens), ratio * new_tokens
    est_kv = steps * blocks * 2 * rows * 2 * inner * (ctx_f * kv_bytes + new_f * kv_bytes)  # reads + writes
    enc_positions = enc.num_blocks + enc.num_up_blocks * ratio  # per token: its keys/values read and written
    enc_kv = rows * 2 * enc.output_size * act_bytes * enc_positions * (cached_tokens + 2 * new_tokens)
    return (steps * est_params + other_params) * act_bytes + est_kv + enc_kv


def dit_flow_flops(cfg: ModelConfig, rows: int, new_tokens: int, cached_tokens: int, lookahead: int = 3) -> float:
    """CosyVoice3's flow pass (DiT): the pre-lookahead convs (k=4 and k=3) at the token rate, then per CFM step on
    2 (CFG) x 2 (frames per token) x R x N virtual rows the input projection of [x, cond, mu, spks], the two
    grouped positional convs, per block QKV + out (4 d^2), the feed-forward (2 ff_mult d^2) and attention over the
    2 (C + N) frames so far (4 ctx d), and the output projection. The AdaLN modulations depend on the CFM step
    only (computed once, not per row) and are left out; so is the flow's lookahead recompute of 3 tokens."""
    flow, est, steps = cfg.flow, cfg.flow.estimator, cfg.flow.cfm.n_timesteps
    d, ratio, channels = est.dim, flow.token_mel_ratio, flow.pre_lookahead_channels
    mt, mt_in = rows * new_tokens, rows * (new_tokens + lookahead)
    lookahead_convs = 2 * mt_in * flow.input_size * channels * 4 + 2 * mt * channels * flow.output_size * 3
    mv, ctx_f = 2 * ratio * mt, ratio * (cached_tokens + new_tokens)
    in_dims = est.mel_dim + est.mel_dim + est.mu_dim + est.spk_dim  # x, cond, mu, spks
    pos_convs = 2 * 2 * mv * d * (d // CONV_POS_GROUPS) * CONV_POS_KERNEL
    block = 2 * mv * d * d * (4 + 2 * est.ff_mult) + 4 * mv * ctx_f * d
    return lookahead_convs + steps * (
        2 * mv * in_dims * d + pos_convs + est.depth * block + 2 * mv * d * est.out_channels
    )


def dit_flow_bytes(
    cfg: ModelConfig,
    flow: torch.nn.Module,
    rows: int,
    new_tokens: int,
    cached_tokens: int,
    act_bytes: int,
    kv_bytes: int,
) -> float:
    """As flow_bytes, for the DiT: its weights once per CFM step, every virtual row's cached keys and values read
    once per block and step and the new ones written (no encoder)."""
    est, steps = cfg.flow.estimator, cfg.flow.cfm.n_timesteps
    est_params = sum(p.numel() for p in flow.decoder.estimator.parameters())
    other_params = sum(p.numel() for p in flow.parameters()) - est_params - flow.input_embedding.weight.numel()
    ratio, inner = cfg.flow.token_mel_ratio, est.heads * est.dim_head
    ctx_f, new_f = ratio * (cached_tokens + new_tokens), ratio * new_tokens
    est_kv = steps * est.depth * 2 * rows * 2 * inner * (ctx_f + new_f) * kv_bytes
    return (steps * est_params + other_params) * act_bytes + est_kv


def conv_flops_bytes(module: torch.nn.Module, run: Callable[[], object]) -> tuple[float, float]:
    """(FLOPs of one call of `run`, bytes the module's convolutions read and write in it)."""
    from torch.utils.flop_counter import FlopCounterMode

    moved = [0]

    def count(conv, inputs, output):
        moved[0] += inputs[0].numel() * inputs[0].element_size() + output.numel() * output.element_size()

    convs = [m for m in module.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    hooks = [m.register_forward_hook(count) for m in convs]
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            run()
    finally:
        for h in hooks:
            h.remove()
    return float(counter.get_total_flops()), float(moved[0])


def hift_flops_bytes(hift: torch.nn.Module, frames: int, cached_samples: int) -> tuple[float, float]:
    """CosyVoice2's HiFT, one row's steady chunk (frames of mel, the cached excitation): (FLOPs, bytes its
    convolutions move)."""
    device = hift.stft_window.device
    mel = torch.zeros(1, hift.cfg.in_channels, frames, device=device)
    phase = torch.zeros(1, hift.m_source.num_harmonics, device=device)
    noise = torch.zeros(1, frames * hift.samples_per_frame, hift.m_source.num_harmonics, device=device)
    return conv_flops_bytes(
        hift, lambda: hift.synthesize(mel, phase, noise, torch.zeros(1, 1, cached_samples, device=device))
    )


def roofline_row(flops: float, nbytes: float, seconds: float, kernels: int | None, device_name: str) -> dict:
    """Achieved TFLOP/s and GB/s, their share of the peak, and what bounds the time: the largest of the compute
    time at peak, the memory time at peak and the launch floor (kernels x LAUNCH_FLOOR_S), as a share of it."""
    row = {"tflops": flops / seconds / 1e12, "gbs": nbytes / seconds / 1e9, "ms": seconds * 1e3}
    peak = peak_of(device_name)
    if peak is None:
        return row
    floors = {"compute": flops / (peak[0] * 1e12), "memory": nbytes / (peak[1] * 1e12)}
    if kernels:
        floors["launches"] = kernels * LAUNCH_FLOOR_S
    bound = max(floors, key=floors.get)
    row.update(
        pct_peak_flops=100 * row["tflops"] / peak[0],
        pct_peak_bw=100 * row["gbs"] / (peak[1] * 1e3),
        bound=bound,
        bound_share=floors[bound] / seconds,
    )
    return row
