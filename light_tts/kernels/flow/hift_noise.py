"""HiFT's source noise from a counter-based generator: every request's draws are a pure function of (its seed, the
sample's index in its audio), so all rows of a batch draw in one launch (inside the HiFT graph), and a request
gets the same noise, hence the same audio, alone or batched, whichever step its chunk runs in.

    noise[r, t, h] = normal(Philox4x32-10(key = seed_r, counter = (offset_r + t) * H + h))    (Box-Muller)
    phase[r, h]    = uniform(Philox(key = seed_r ^ PHASE_KEY, counter = offset_r * H + h)), phase[r, 0] = 0

offset_r is the absolute sample index of the chunk's first sample in its request's audio: a chunk's re-vocoded
overlap gets the noise the previous chunk drew for those samples. These are not upstream's numbers (its CPU
generator's stream); the distribution is the same. The torch reference reimplements Triton's Philox, uniform and
Box-Muller steps in integer arithmetic, so the two agree to the rounding of log/sin/cos.
"""

import torch
import triton
import triton.language as tl

PHASE_KEY = 0x2545F491  # the phases' key: seed ^ PHASE_KEY (a stream apart from the noise's)
MAX_COUNTER = 2**31  # counters are int32: offsets up to 2^31 / H samples (about 2.7 hours at 24 kHz, H = 9)


@triton.jit
def _keyed_noise_kernel(
    seed_ptr,
    offset_ptr,
    noise_ptr,
    phase_ptr,
    num,
    H: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK: tl.constexpr,
    PHASE: tl.constexpr,
):
    row = tl.program_id(0)
    seed = tl.load(seed_ptr + row)
    base = tl.load(offset_ptr + row) * H
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # flat (sample, harmonic) index in the row
    z = tl.randn(seed, (base + idx).to(tl.int32))
    tl.store(noise_ptr + row.to(tl.int64) * num + idx, z, mask=idx < num)
    if tl.program_id(1) == 0:
        hs = tl.arange(0, BLOCK_H)
        u = tl.rand(seed ^ PHASE, (base + hs).to(tl.int32))
        tl.store(phase_ptr + row * H + hs, tl.where(hs == 0, 0.0, u), mask=hs < H)


def keyed_noise_triton(
    seeds: torch.Tensor, offsets: torch.Tensor, num_samples: int, num_harmonics: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """seeds, offsets [B] int64 -> (phase [B, H], noise [B, num_samples, H]) float32 on their device."""
    assert seeds.dtype == torch.int64 and offsets.dtype == torch.int64 and seeds.shape == offsets.shape
    assert seeds.is_contiguous() and offsets.is_contiguous()
    b, h = seeds.shape[0], num_harmonics
    noise = torch.empty((b, num_samples, h), dtype=torch.float32, device=seeds.device)
    phase = torch.empty((b, h), dtype=torch.float32, device=seeds.device)
    block = 1024
    if b:
        _keyed_noise_kernel[(b, triton.cdiv(num_samples * h, block))](
            seeds,
            offsets,
            noise,
            phase,
            num_samples * h,
            H=h,
            BLOCK_H=triton.next_power_of_2(h),
            BLOCK=block,
            PHASE=PHASE_KEY,
            num_warps=4,
        )
    return phase, noise


# ---- the torch reference: Triton's Philox4x32-10, uint -> uniform float, Box-Muller ----

M32 = 0xFFFFFFFF
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a 32-bit constant a and int64 b < 2^32 (16-bit limbs: no overflow)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    mid = a_hi * b_lo + a_lo * b_hi
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)
    return (a_hi * b_hi + (mid >> 16) + (low >> 32)) & M32, low & M32


def philox(seed: torch.Tensor, counter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two 32-bit outputs of Philox4x32-10 for key seed (int64, split lo/hi) and counter (c0; c1..c3 = 0),
    as int64 tensors in [0, 2^32)."""
    c0, c1 = counter & M32, torch.zeros_like(counter)
    c2, c3 = torch.zeros_like(counter), torch.zeros_like(counter)
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
    return c0, c1


def _uniform(x: torch.Tensor) -> torch.Tensor:
    x = torch.where(x >= 2**31, x - 2**32, x)  # bitcast to int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def keyed_noise_ref(
    seeds: torch.Tensor, offsets: torch.Tensor, num_samples: int, num_harmonics: int
) -> tuple[torch.Tensor, torch.Tensor]:
    h = num_harmonics
    counters = offsets[:, None] * h + torch.arange(num_samples * h, device=seeds.device)[None, :]  # (B, T H)
    i1, i2 = philox(seeds[:, None].expand_as(counters), counters)
    u1, u2 = torch.clamp(_uniform(i1), min=1.0e-7), _uniform(i2)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    noise = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)
    phase_counters = offsets[:, None] * h + torch.arange(h, device=seeds.device)[None, :]
    phase = _uniform(philox((seeds ^ PHASE_KEY)[:, None].expand_as(phase_counters), phase_counters)[0])
    phase[:, 0] = 0
    return phase, noise.view(-1, num_samples, h)
