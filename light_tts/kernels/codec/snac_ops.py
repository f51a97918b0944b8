"""The elementwise and depthwise part of SNAC's decoder blocks in fused launches (the 1x1 convs and the transposed
convs stay cuBLAS / cuDNN calls between them):

    unit_in:  x = r + h * noise[t]  or  r + h + b_h       (a noise block's or a residual unit's output)
              s = snake(x)                                 (first launch: x and s written)
              z = snake(dwconv7_d(s) + b_dw)               (second launch: the next unit up to its 1x1 conv)
    snake_in: y = snake(r + h + b_h)                       (the last unit's output into the next upsampling)
    head:     audio = tanh(conv7(snake(r + h + b_h)) + b)  (the last unit's output into the output conv)

Activations are [B, C, T], contiguous. SNAC's torch graph makes ~12 passes over each activation per residual unit
(Snake alone is five kernels); unit_in makes 6 (r, h, s read; x, s, z written) and the GEMM 2. unit_in was first
one launch whose 7 depthwise taps re-read the shifted input and re-applied the first Snake at each tap (nothing in
between written): on an H100 that launch took 2.1x the two (bench.snac, 64 windows: 16.5 vs 7.7 ms a decode,
docs/performance.md), its Snakes (sin, division) costing more than the pass over memory they saved.

Noise is the reference's counter_noise (models/orpheus/snac.py) computed in place: each program hashes its row's
key from (seed, counter, block) and each time step's normal from the key (one value per t, broadcast over
channels), so the noise costs no launch of its own.
"""

import math

import torch
import triton
import triton.language as tl

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
TILE = 1024  # values a program holds per tensor
NUM_WARPS = 4


@triton.jit
def _mix32(x):
    """lowbias32 on int64 values < 2^32 (as the reference's _mix32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _normal_at(key, t):
    """The noise at time steps t [BT] of a row with this block key (Box-Muller on two hashed 24-bit uniforms)."""
    i = t.to(tl.int64)
    h1 = _mix32((key + (2 * i) * 0x9E3779B9) & 0xFFFFFFFF)
    h2 = _mix32((key + (2 * i + 1) * 0x9E3779B9) & 0xFFFFFFFF)
    u1 = ((h1 >> 8).to(tl.float32) + 0.5) / 16777216.0
    u2 = (h2 >> 8).to(tl.float32) / 16777216.0
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def _row_key(seed_ptr, counter_ptr, row, salt):
    """The row's key for one block's noise (noise_key_ref): a hash of its seed, its counter and the block's salt."""
    seed = tl.load(seed_ptr + row)
    key = _mix32(_mix32(seed & 0xFFFFFFFF) ^ ((seed >> 32) & 0xFFFFFFFF))
    key = _mix32(key ^ (tl.load(counter_ptr + row) & 0xFFFFFFFF))
    return _mix32(key ^ salt)


@triton.jit
def _row_terms(
    seed_ptr, counter_ptr, salt, bh_ptr, row, cs, is_c, HAS_H: tl.constexpr, NOISE: tl.constexpr, BC: tl.constexpr
):
    """What a row adds to r: (its noise key, 0 bias) for a noise block, (0, b_h) for a unit, (0, 0) for r alone."""
    if NOISE:
        key = _row_key(seed_ptr, counter_ptr, row, salt)
        bh = tl.zeros((BC,), tl.float32)
    else:
        key = 0
        if HAS_H:
            bh = tl.load(bh_ptr + cs, mask=is_c, other=0.0)
        else:
            bh = tl.zeros((BC,), tl.float32)
    return key, bh


@triton.jit
def _snake(x, alpha, inv_alpha):
    s = tl.sin(alpha * x)
    return x + inv_alpha * (s * s)


@triton.jit
def _load_sum(r_ptr, h_ptr, bh, key, offs, t, mask, T, HAS_H: tl.constexpr, NOISE: tl.constexpr):
    """r + h * noise[t] (NOISE), r + h + b_h (HAS_H) or r, at [BC, BT] offsets; 0 outside the row (conv padding)."""
    inside = (t >= 0) & (t < T)
    m = mask & inside[None, :]
    v = tl.load(r_ptr + offs, mask=m, other=0.0)
    if HAS_H:
        h = tl.load(h_ptr + offs, mask=m, other=0.0)
        if NOISE:
            v = v + _normal_at(key, t)[None, :] * h
        else:
            v = v + (h + bh[:, None])
    return tl.where(inside[None, :], v, 0.0)


@triton.jit
def _sum_snake_kernel(
    r_ptr,
    h_ptr,
    bh_ptr,
    seed_ptr,
    counter_ptr,
    salt,
    a_ptr,
    x_ptr,
    s_ptr,
    C,
    T,
    HAS_H: tl.constexpr,
    NOISE: tl.constexpr,
    WRITE_X: tl.constexpr,
    BC: tl.constexpr,
    BT: tl.constexpr,
):
    """x = r + h * noise, r + h + b_h or r; s = snake(x) written (and x, when WRITE_X: unit_in's first half)."""
    row = tl.program_id(2)
    cs = tl.program_id(1) * BC + tl.arange(0, BC)
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    is_c = cs < C
    offs = row.to(tl.int64) * C * T + cs[:, None].to(tl.int64) * T + ts[None, :]
    key, bh = _row_terms(seed_ptr, counter_ptr, salt, bh_ptr, row, cs, is_c, HAS_H, NOISE, BC)
    v = _load_sum(r_ptr, h_ptr, bh, key, offs, ts, is_c[:, None], T, HAS_H, NOISE)
    a = tl.load(a_ptr + cs, mask=is_c, other=1.0)
    mask = is_c[:, None] & (ts < T)[None, :]
    if WRITE_X:
        tl.store(x_ptr + offs, v, mask=mask)
    tl.store(s_ptr + offs, _snake(v, a[:, None], (1.0 / (a + 1e-9))[:, None]), mask=mask)


@triton.jit
def _dw_snake_kernel(s_ptr, w_ptr, bw_ptr, a_ptr, z_ptr, C, T, D: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr):
    """unit_in's second half when split: z = snake(dwconv7_d(s) + b_dw)."""
    row = tl.program_id(2)
    cs = tl.program_id(1) * BC + tl.arange(0, BC)
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    is_c = cs < C
    base = row.to(tl.int64) * C * T
    acc = tl.zeros((BC, BT), tl.float32)
    for k in tl.static_range(7):
        t = ts + (k - 3) * D
        m = is_c[:, None] & ((t >= 0) & (t < T))[None, :]
        v = tl.load(s_ptr + base + cs[:, None].to(tl.int64) * T + t[None, :], mask=m, other=0.0)
        acc += tl.load(w_ptr + cs * 7 + k, mask=is_c, other=0.0)[:, None] * v
    a = tl.load(a_ptr + cs, mask=is_c, other=1.0)
    z = _snake(acc + tl.load(bw_ptr + cs, mask=is_c, other=0.0)[:, None], a[:, None], (1.0 / (a + 1e-9))[:, None])
    offs = base + cs[:, None].to(tl.int64) * T + ts[None, :]
    tl.store(z_ptr + offs, z, mask=is_c[:, None] & (ts < T)[None, :])


@triton.jit
def _head_kernel(r_ptr, h_ptr, bh_ptr, a_ptr, w_ptr, b_out, out_ptr, C, T, BC: tl.constexpr, BT: tl.constexpr):
    row = tl.program_id(1)
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    base = row.to(tl.int64) * C * T
    acc = tl.zeros((BT,), tl.float32)
    for c0 in range(0, C, BC):
        cs = c0 + tl.arange(0, BC)
        is_c = cs < C
        bh = tl.load(bh_ptr + cs, mask=is_c, other=0.0)
        a = tl.load(a_ptr + cs, mask=is_c, other=1.0)
        inv_a = 1.0 / (a + 1e-9)
        for k in tl.static_range(7):
            t = ts + (k - 3)
            offs = base + cs[:, None].to(tl.int64) * T + t[None, :]
            v = _load_sum(r_ptr, h_ptr, bh, 0, offs, t, is_c[:, None], T, True, False)
            w = tl.load(w_ptr + cs * 7 + k, mask=is_c, other=0.0)
            acc += tl.sum(w[:, None] * _snake(v, a[:, None], inv_a[:, None]), axis=0)
    y = acc + b_out
    e = tl.exp(tl.minimum(2.0 * y, 80.0))  # tanh(y) = 1 - 2 / (e^2y + 1)
    tl.store(out_ptr + row.to(tl.int64) * T + ts, 1.0 - 2.0 / (e + 1.0), mask=ts < T)


def _grid(b: int, c: int, t: int, bc: int, bt: int) -> tuple[int, int, int]:
    return triton.cdiv(t, bt), triton.cdiv(c, bc), b


def _blocks(c: int, t: int) -> tuple[int, int]:
    """Channels x time steps per program: TILE values (8 a thread at 4 warps: no register spills), time-major."""
    bt = min(128, triton.next_power_of_2(t))
    return min(triton.next_power_of_2(c), max(1, TILE // bt)), bt


def _check(r: torch.Tensor, h: torch.Tensor | None) -> tuple[int, int, int]:
    assert r.dim() == 3 and r.is_contiguous() and r.dtype == torch.float32
    assert h is None or (h.shape == r.shape and h.is_contiguous() and h.dtype == r.dtype)
    return r.shape


def unit_in_triton(r, h, h_bias, noise, alpha1, dw_weight, dw_bias, alpha2, dilation: int):
    """r, h [B, C, T]; h_bias [C] (a residual unit) or noise = (seeds [B], counters [B] int64, block index) (a
    noise block: h_bias None); the next unit's Snake alpha1 [C], depthwise weight [C, 7] and bias [C], Snake
    alpha2 [C] -> (x, z), both [B, C, T]."""
    b, c, t = _check(r, h)
    assert (h_bias is None) != (noise is None) and dw_weight.shape == (c, 7) and dw_weight.is_contiguous()
    seeds, counters, salt = _noise_args(r, noise)
    x, z = torch.empty_like(r), torch.empty_like(r)
    bc, bt = _blocks(c, t)
    grid = _grid(b, c, t, bc, bt)
    bh = h_bias if noise is None else alpha1  # (a placeholder the noise form never reads)
    s = torch.empty_like(r)
    _sum_snake_kernel[grid](
        r, h, bh, seeds, counters, salt, alpha1, x, s, c, t, HAS_H=True, NOISE=noise is not None, WRITE_X=True,
        BC=bc, BT=bt, num_warps=NUM_WARPS,
    )  # fmt: skip
    _dw_snake_kernel[grid](s, dw_weight, dw_bias, alpha2, z, c, t, D=dilation, BC=bc, BT=bt, num_warps=NUM_WARPS)
    return x, z


def _noise_args(r: torch.Tensor, noise) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(seeds, counters, the block's salt) for the kernels; placeholders without noise."""
    if noise is None:
        return r, r, 0
    seeds, counters, block = noise
    assert seeds.dtype == counters.dtype == torch.int64 and seeds.shape == counters.shape == (r.shape[0],)
    return seeds, counters, block_salt(block)


def block_salt(block: int) -> int:
    return 0x27D4EB2F * (block + 1) & MASK32


def snake_in_triton(r, h, h_bias, alpha):
    """snake(r + h + h_bias) ([B, C, T]; h and h_bias None: snake(r))."""
    b, c, t = _check(r, h)
    y = torch.empty_like(r)
    bc, bt = _blocks(c, t)
    has_h = h is not None
    _sum_snake_kernel[_grid(b, c, t, bc, bt)](
        r, h if has_h else r, h_bias if has_h else alpha, r, r, 0, alpha, y, y, c, t, HAS_H=has_h, NOISE=False,
        WRITE_X=False, BC=bc, BT=bt, num_warps=NUM_WARPS,
    )  # fmt: skip
    return y


def head_triton(r, h, h_bias, alpha, weight, bias: float):
    """tanh(conv7(snake(r + h + h_bias)) + bias): [B, C, T] -> audio [B, T]; weight [C, 7] (one output channel)."""
    b, c, t = _check(r, h)
    assert weight.shape == (c, 7) and weight.is_contiguous()
    out = torch.empty((b, t), dtype=r.dtype, device=r.device)
    bt = min(128, triton.next_power_of_2(t))
    bc = min(triton.next_power_of_2(c), max(1, TILE // bt))
    _head_kernel[(triton.cdiv(t, bt), b)](
        r, h, h_bias, alpha, weight, bias, out, c, t, BC=bc, BT=bt, num_warps=NUM_WARPS
    )
    return out


# ---- torch references (what SNAC's modules compute, on the same arguments) ----


def snake_ref(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a = alpha[None, :, None]
    return x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)


def mix32_ref(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values < 2^32 (products wrap, the mask keeps the low 32 bits, which
    wrapping does not change)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def noise_key_ref(seeds: torch.Tensor, counters: torch.Tensor, block: int) -> torch.Tensor:
    """Each row's key for one block's noise: a hash of (seed, counter, block) ([B] int64 tensors, < 2^32)."""
    key = mix32_ref(mix32_ref(seeds & MASK32) ^ ((seeds >> 32) & MASK32))
    key = mix32_ref(key ^ (counters & MASK32))
    return mix32_ref(key ^ block_salt(block))


def normal_ref(keys: torch.Tensor, length: int) -> torch.Tensor:
    """keys [B] -> the noise [B, length] that _normal_at computes."""
    i = torch.arange(length, device=keys.device)
    h1 = mix32_ref((keys[:, None] + (2 * i) * GOLDEN) & MASK32)
    h2 = mix32_ref((keys[:, None] + (2 * i + 1) * GOLDEN) & MASK32)
    u1 = ((h1 >> 8).float() + 0.5) / (1 << 24)
    u2 = (h2 >> 8).float() / (1 << 24)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def unit_in_ref(r, h, h_bias, noise, alpha1, dw_weight, dw_bias, alpha2, dilation: int):
    if noise is not None:
        x = r + normal_ref(noise_key_ref(*noise), r.shape[-1])[:, None, :] * h
    else:
        x = r + h + h_bias[None, :, None]
    y = torch.nn.functional.conv1d(
        snake_ref(x, alpha1), dw_weight[:, None, :], dw_bias, padding=3 * dilation, dilation=dilation, groups=r.shape[1]
    )
    return x, snake_ref(y, alpha2)


def snake_in_ref(r, h, h_bias, alpha):
    return snake_ref(r if h is None else r + h + h_bias[None, :, None], alpha)


def head_ref(r, h, h_bias, alpha, weight, bias: float):
    y = torch.nn.functional.conv1d(snake_ref(r + h + h_bias[None, :, None], alpha), weight[None], padding=3)
    return torch.tanh(y[:, 0] + bias)
