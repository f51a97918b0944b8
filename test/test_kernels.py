"""Kernel-vs-reference tests: Triton interpreter on CPU at small shapes, compiled on CUDA at Qwen2.5-0.5B shapes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import triton

IS_CUDA = torch.cuda.is_available()
# off-GPU the kernels run in Triton's interpreter, which works only if TRITON_INTERPRET=1 was set before triton was
# first imported (by this file or any earlier test); without it this file reruns itself in a fresh interpreter
NEEDS_RERUN = not IS_CUDA and os.environ.get("TRITON_INTERPRET") != "1"
# (conftest.py patches the interpreter's loop bounds for NumPy >= 2.4)

from light_tts.kernels.llm import ops  # noqa: E402
from light_tts.kernels.llm.decode_attention import SplitLaunch, choose_split_len, decode_attention_triton  # noqa: E402
from light_tts.kernels.llm.prefill_attention import prefill_attention_triton  # noqa: E402

DEVICE = torch.device("cuda" if IS_CUDA else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# the interpreter's tl.dot multiplies bf16 bit patterns as integers, so attention runs bf16 only when compiled
ATTN_DTYPES = DTYPES if IS_CUDA else [torch.float32, torch.float16]
# (num_q_heads, num_kv_heads, head_dim): the tiny fixture; GQA with a group that is not a power of two; Qwen2.5-0.5B
HEAD_SHAPES = [(4, 2, 16), (6, 2, 16)] + ([(14, 2, 64)] if IS_CUDA else [])
# (new tokens, cached prefix) per sequence; small on CPU where the interpreter is slow
PREFILL_SEQS = [(300, 0), (77, 200), (1000, 50), (1, 999)] if IS_CUDA else [(5, 0), (37, 12), (20, 29)]
DECODE_LENS = [0, 1, 300, 1000, 777, 0] if IS_CUDA else [0, 1, 50, 17, 0]
ATTN_BLOCKS = {} if IS_CUDA else {"block_m": 16, "block_n": 16}  # small blocks: several per sequence on CPU
DECODE_LAUNCH = SplitLaunch(block_n=ATTN_BLOCKS.get("block_n", 32))


@pytest.fixture(autouse=True)
def _skip_unless_kernels_can_run(request):
    if NEEDS_RERUN and request.node.name != "test_kernels_in_interpreter_process":
        pytest.skip("run by test_kernels_in_interpreter_process")


def test_kernels_in_interpreter_process():
    if not NEEDS_RERUN:
        pytest.skip("the kernels already run in this process")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def tolerance(dtype: torch.dtype) -> dict:
    return {
        torch.float32: dict(atol=1e-4, rtol=1e-4),
        torch.float16: dict(atol=5e-3, rtol=5e-3),
        torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    }[dtype]


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, with_residual, poisoned_empty):
    num_tokens, hidden = (256, 896) if IS_CUDA else (7, 64)
    x = randn(num_tokens, hidden, dtype=dtype)
    weight = randn(hidden, dtype=dtype)
    residual = randn(num_tokens, hidden, dtype=dtype) if with_residual else None
    out, residual_out = ops.rms_norm(x, weight, 1e-6, residual, use_triton=True)
    ref_out, ref_residual = ops.rms_norm(x, weight, 1e-6, residual, use_triton=False)
    torch.testing.assert_close(out, ref_out, **tolerance(dtype))
    if with_residual:
        torch.testing.assert_close(residual_out, ref_residual, **tolerance(dtype))
    else:
        assert residual_out is None and ref_residual is None


def test_rms_norm_ref_matches_float64():
    x, weight, residual = torch.randn(5, 64), torch.randn(64), torch.randn(5, 64)
    out, _ = ops.rms_norm(x, weight, 1e-6, residual, use_triton=False)
    r = x.double() + residual.double()
    expected = r / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEAD_SHAPES)
def test_apply_rotary(dtype, heads):
    num_q_heads, num_kv_heads, head_dim = heads
    num_tokens = 64 if IS_CUDA else 9
    # q and k are strided views of one fused qkv projection, as in the engine
    qkv = randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : num_q_heads * head_dim].view(num_tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim : (num_q_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim
    )
    cache = ops.build_cos_sin_cache(2048, head_dim, 1e6, DEVICE)
    positions = torch.randint(0, 2048, (num_tokens,), device=DEVICE)
    positions[0] = 5  # a non-zero position, so a kernel that writes nothing fails
    q_ref, k_ref = q.clone(), k.clone()
    v_before = qkv[:, (num_q_heads + num_kv_heads) * head_dim :].clone()
    ops.apply_rotary(q, k, positions, cache, use_triton=True)
    ops.apply_rotary(q_ref, k_ref, positions, cache, use_triton=False)
    torch.testing.assert_close(q, q_ref, **tolerance(dtype))
    torch.testing.assert_close(k, k_ref, **tolerance(dtype))
    assert torch.equal(qkv[:, (num_q_heads + num_kv_heads) * head_dim :], v_before)  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEAD_SHAPES)
def test_apply_rotary_with_kv_store(dtype, heads):
    """The fused launch: the qkv bias added to q, k, v, q and k rotated in place, rotated k and v written at their
    slots."""
    num_q_heads, num_kv_heads, head_dim = heads
    num_tokens, num_slots = (64, 200) if IS_CUDA else (9, 30)
    qkv = randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k, v = (x.view(num_tokens, -1, head_dim) for x in (q, k, v))
    cache = ops.build_cos_sin_cache(2048, head_dim, 1e6, DEVICE)
    positions = torch.randint(1, 2048, (num_tokens,), device=DEVICE)
    slots = torch.randperm(num_slots, device=DEVICE)[:num_tokens]
    slots[2] = -1  # padding token: not stored
    k_cache = torch.full((num_slots, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    qkv_ref, k_cache_ref, v_cache_ref = qkv.clone(), k_cache.clone(), v_cache.clone()
    q_ref, k_ref, v_ref = (
        x.view(num_tokens, -1, head_dim)
        for x in qkv_ref.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    )
    bias = randn(qkv.shape[1], dtype=dtype)
    v_expected = (v.float() + bias[-v[0].numel() :].view(v.shape[1:]).float()).to(dtype)
    ops.apply_rotary(q, k, positions, cache, v, k_cache, v_cache, slots, bias, use_triton=True)
    ops.apply_rotary(q_ref, k_ref, positions, cache, v_ref, k_cache_ref, v_cache_ref, slots, bias, use_triton=False)
    torch.testing.assert_close(qkv, qkv_ref, **tolerance(dtype))
    torch.testing.assert_close(v, v_expected, **tolerance(dtype))
    torch.testing.assert_close(k_cache, k_cache_ref, equal_nan=True, **tolerance(dtype))
    torch.testing.assert_close(v_cache, v_cache_ref, equal_nan=True, **tolerance(dtype))
    stored = slots[slots >= 0]
    assert (
        torch.equal(k_cache[stored], k[slots >= 0])
        and k_cache.isnan().sum() == (num_slots - num_tokens + 1) * num_kv_heads * head_dim
    )


def test_rotary_ref_matches_hf_float64():
    head_dim, theta = 16, 1e6
    q, k = torch.randn(6, 4, head_dim), torch.randn(6, 2, head_dim)
    positions = torch.tensor([0, 1, 5, 17, 100, 2047])
    expected = []
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    emb = torch.cat([positions.double()[:, None] * inv_freq] * 2, dim=-1)[:, None, :]  # (T, 1, D)
    for x in (q, k):
        x = x.double()
        rotated_half = torch.cat([-x[..., head_dim // 2 :], x[..., : head_dim // 2]], dim=-1)
        expected.append(x * emb.cos() + rotated_half * emb.sin())
    ops.apply_rotary(q, k, positions, ops.build_cos_sin_cache(2048, head_dim, theta, "cpu"), use_triton=False)
    torch.testing.assert_close(q.double(), expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k.double(), expected[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype, poisoned_empty):
    num_tokens, intermediate = (256, 4864) if IS_CUDA else (5, 160)
    x = randn(num_tokens, 2 * intermediate, dtype=dtype)
    out = ops.silu_and_mul(x, use_triton=True)
    torch.testing.assert_close(out, ops.silu_and_mul(x, use_triton=False), **tolerance(dtype))
    gate, up = x.double().chunk(2, dim=-1)
    torch.testing.assert_close(
        ops.silu_and_mul(x, use_triton=False).double(), gate / (1 + torch.exp(-gate)) * up, **tolerance(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_store_kv(dtype, slot_dtype):
    num_tokens, num_kv_heads, head_dim, num_slots = 10, 2, 16, 40
    k = randn(num_tokens, num_kv_heads, head_dim, dtype=dtype)
    v = randn(num_tokens, num_kv_heads, head_dim, dtype=dtype)
    slots = torch.randperm(num_slots, device=DEVICE)[:num_tokens].to(slot_dtype)
    slots[3] = -1  # padding token
    k_cache = torch.full((num_slots, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ops.store_kv(k, v, k_cache, v_cache, slots, use_triton=True)
    ops.store_kv(k, v, k_ref, v_ref, slots, use_triton=False)
    torch.testing.assert_close(k_cache, k_ref, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, v_ref, atol=0, rtol=0, equal_nan=True)
    written = slots[slots >= 0].long()
    assert torch.equal(k_cache[written], k[slots >= 0]) and k_cache.isnan().sum() == (num_slots - 9) * 2 * head_dim


def make_kv_cache(seq_lens, num_kv_heads, head_dim, dtype):
    """Random K/V cache and a req_to_token table with scattered slots; sequence i lives in request row 2i+1."""
    max_len = max(seq_lens) + 5
    num_slots = sum(seq_lens) + 20
    k_cache = randn(num_slots, num_kv_heads, head_dim, dtype=dtype)
    v_cache = randn(num_slots, num_kv_heads, head_dim, dtype=dtype)
    req_to_token = torch.zeros(2 * len(seq_lens) + 1, max_len, dtype=torch.int32, device=DEVICE)
    perm = torch.randperm(num_slots, device=DEVICE).to(torch.int32)
    used = 0
    for i, n in enumerate(seq_lens):
        req_to_token[2 * i + 1, :n] = perm[used : used + n]
        used += n
    b_req_idx = torch.arange(1, 2 * len(seq_lens), 2, dtype=torch.int32, device=DEVICE)
    return k_cache, v_cache, req_to_token, b_req_idx


def naive_attention(q, k, v, causal_offset):
    """float64 SDPA of q [N, Hq, D] over k, v [S, Hkv, D]; query i sees keys <= causal_offset + i."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = torch.arange(k.shape[0])[None, :] <= causal_offset + torch.arange(q.shape[0])[:, None]
    out = F.scaled_dot_product_attention(
        q.double().transpose(0, 1), k.double().transpose(0, 1), v.double().transpose(0, 1), attn_mask=mask.to(q.device)
    )
    return out.transpose(0, 1)


def make_prefill_case(heads, dtype, seqs=PREFILL_SEQS):
    num_q_heads, num_kv_heads, head_dim = heads
    num_new = [n for n, _ in seqs]
    seq_lens = [n + p for n, p in seqs]
    k_cache, v_cache, req_to_token, b_req_idx = make_kv_cache(seq_lens, num_kv_heads, head_dim, dtype)
    as_i32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device=DEVICE)  # noqa: E731
    start_loc = [sum(num_new[:i]) for i in range(len(seqs))]
    q = randn(sum(num_new), num_q_heads, head_dim, dtype=dtype)
    return (
        q,
        k_cache,
        v_cache,
        req_to_token,
        b_req_idx,
        as_i32(start_loc),
        as_i32(seq_lens),
        as_i32([p for _, p in seqs]),
        head_dim**-0.5,
    )


@pytest.mark.parametrize("dtype", ATTN_DTYPES)
@pytest.mark.parametrize("heads", HEAD_SHAPES)
def test_prefill_attention(dtype, heads, poisoned_empty):
    case = make_prefill_case(heads, dtype)
    out = prefill_attention_triton(*case, max_new_len=max(n for n, _ in PREFILL_SEQS), **ATTN_BLOCKS)
    torch.testing.assert_close(out, ops.prefill_attention(*case, use_triton=False), **tolerance(dtype))


def test_prefill_attention_dispatch_default_grid(poisoned_empty):
    """Through ops with default blocks and the grid bounded by T instead of max_new_len."""
    case = make_prefill_case(HEAD_SHAPES[0], torch.float32)
    torch.testing.assert_close(
        ops.prefill_attention(*case, use_triton=True),
        ops.prefill_attention(*case, use_triton=False),
        **tolerance(torch.float32),
    )


def test_prefill_ref_matches_float64_sdpa():
    q, k_cache, v_cache, req_to_token, b_req_idx, start_loc, seq_lens, prefix_lens, scale = make_prefill_case(
        (6, 2, 16), torch.float32, seqs=[(5, 0), (37, 12), (20, 29)]
    )
    out = ops.prefill_attention(
        q, k_cache, v_cache, req_to_token, b_req_idx, start_loc, seq_lens, prefix_lens, scale, use_triton=False
    )
    for req, start, seq_len, prefix in zip(
        b_req_idx.tolist(), start_loc.tolist(), seq_lens.tolist(), prefix_lens.tolist()
    ):
        slots = req_to_token[req, :seq_len].long()
        expected = naive_attention(q[start : start + seq_len - prefix], k_cache[slots], v_cache[slots], prefix)
        torch.testing.assert_close(out[start : start + seq_len - prefix].double(), expected, atol=1e-5, rtol=1e-5)


def make_decode_case(heads, dtype, seq_lens=DECODE_LENS):
    num_q_heads, num_kv_heads, head_dim = heads
    k_cache, v_cache, req_to_token, b_req_idx = make_kv_cache(seq_lens, num_kv_heads, head_dim, dtype)
    # padding rows point at a sentinel request one past the table: reading it would be out of bounds
    b_req_idx[torch.tensor(seq_lens, device=DEVICE) == 0] = req_to_token.shape[0]
    q = randn(len(seq_lens), num_q_heads, head_dim, dtype=dtype)
    b_seq_len = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    return q, k_cache, v_cache, req_to_token, b_req_idx, b_seq_len, head_dim**-0.5


@pytest.mark.parametrize("dtype", ATTN_DTYPES)
@pytest.mark.parametrize("heads", HEAD_SHAPES)
def test_decode_attention(dtype, heads, poisoned_empty):
    case = make_decode_case(heads, dtype)
    out = decode_attention_triton(*case, max_seq_len=max(DECODE_LENS), launch=DECODE_LAUNCH)
    ref = ops.decode_attention(*case, use_triton=False)
    torch.testing.assert_close(out, ref, **tolerance(dtype))
    is_padding = case[5] == 0
    assert is_padding.any() and (out[is_padding] == 0).all()


@pytest.mark.parametrize("split_len", [16, 48, 1024])
def test_decode_attention_split_lengths(split_len, poisoned_empty):
    """Explicit splits: several equal ones, a last one cut short by the sequence, and a single split."""
    case = make_decode_case(HEAD_SHAPES[0], torch.float32)
    out = decode_attention_triton(*case, launch=SplitLaunch(block_n=16), split_len=split_len)
    torch.testing.assert_close(out, ops.decode_attention(*case, use_triton=False), **tolerance(torch.float32))


def test_decode_attention_dispatch_splits_context(poisoned_empty):
    """Through ops with the split chosen from the table's row length: small batches must use several splits."""
    case = make_decode_case(HEAD_SHAPES[0], torch.float32)
    max_len = case[3].shape[1]
    assert triton.cdiv(max_len, choose_split_len(len(DECODE_LENS), 2, max_len, 32, DEVICE)) > 1
    torch.testing.assert_close(
        ops.decode_attention(*case, use_triton=True),
        ops.decode_attention(*case, use_triton=False),
        **tolerance(torch.float32),
    )


def test_decode_ref_matches_float64_sdpa_and_prefill():
    q, k_cache, v_cache, req_to_token, b_req_idx, b_seq_len, scale = make_decode_case((6, 2, 16), torch.float32)
    out = ops.decode_attention(q, k_cache, v_cache, req_to_token, b_req_idx, b_seq_len, scale, use_triton=False)
    for i, (req, seq_len) in enumerate(zip(b_req_idx.tolist(), b_seq_len.tolist())):
        if seq_len == 0:
            assert (out[i] == 0).all()
            continue
        slots = req_to_token[req, :seq_len].long()
        expected = naive_attention(q[i : i + 1], k_cache[slots], v_cache[slots], seq_len - 1)[0]
        torch.testing.assert_close(out[i].double(), expected, atol=1e-5, rtol=1e-5)
        # decode of the last position equals a prefill of one new token after a prefix of seq_len - 1
        as_i32 = lambda xs: torch.tensor(xs, dtype=torch.int32)  # noqa: E731
        prefill = ops.prefill_attention(
            q[i : i + 1],
            k_cache,
            v_cache,
            req_to_token,
            as_i32([req]),
            as_i32([0]),
            as_i32([seq_len]),
            as_i32([seq_len - 1]),
            scale,
            use_triton=False,
        )
        torch.testing.assert_close(prefill[0], out[i], atol=1e-5, rtol=1e-5)


def test_ras_first_attempt_matches_reference(poisoned_empty):
    """Fused sampling vs the torch reference on the same uniforms: nucleus draws, repetition fallbacks (the
    likeliest ids were just decoded), greedy rows with and without specials forbidden."""
    from light_tts.llm.sampler import pack_sampling

    batch, vocab, eos = (256, 6564, 6561) if IS_CUDA else (24, 300, 297)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, vocab, generator=gen) * 3
    logits[:8, eos:] = logits[:8].max(dim=1, keepdim=True).values + torch.tensor([1.0, 0.9, 0.8])  # specials win
    windows = [torch.randint(0, vocab, (10,), generator=gen).tolist() for _ in range(batch)]
    for i in range(batch // 3, 2 * batch // 3):
        windows[i][:5] = logits[i].topk(5).indices.tolist()
    is_greedy = [i % 4 == 0 for i in range(batch)]
    is_rejecting = [i % 3 != 0 for i in range(batch)]
    packed, _, _ = pack_sampling(list(range(batch)), [7] * batch, is_rejecting, is_greedy, windows)
    scores = logits.log_softmax(dim=-1)
    args = (25, 0.8, 10 * 0.1, eos)
    ids, banned = ops.ras_first_attempt(scores.to(DEVICE), packed.to(DEVICE), *args, use_triton=True)
    ids_ref, banned_ref = ops.ras_first_attempt(scores, packed, *args, use_triton=False)
    assert ids.tolist() == ids_ref.tolist() and banned.tolist() == banned_ref.tolist()
    fallbacks = [i for i, b in enumerate(banned_ref.tolist()) if b >= 0]
    assert len(fallbacks) > batch // 6
    assert ids_ref[0] == eos and 0 <= ids_ref[4] < eos  # greedy rows 0 (specials allowed) and 4 (forbidden)


def nucleus_inputs(batch: int, vocab: int, seed: int = 0):
    """Logits, packed rows and a seen table for the nucleus sampler: full and narrowed ranges, greedy rows, a
    peaked row, seen ids (penalised) among the likeliest."""
    from light_tts.llm.nucleus_sampler import pack_rows

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen) * 2
    logits[1, 7] = 30.0  # one id takes all the mass
    seen = torch.zeros(batch + 1, vocab, dtype=torch.bool)
    decoded = []
    for i in range(batch):
        ids = logits[i].topk(3).indices.tolist() + torch.randint(0, vocab, (5,), generator=gen).tolist()
        decoded.append(ids if i % 5 else [])
        seen[i + 1, decoded[-1]] = True
    ranges = [(0, vocab) if i % 3 else (vocab // 3, vocab // 3 + 100) for i in range(batch)]
    packed = pack_rows(
        list(range(1, batch + 1)), decoded, ranges, [i % 4 == 0 for i in range(batch)], list(range(batch))
    )
    return logits, packed, seen


@pytest.mark.parametrize("vocab", [300, 9000])  # one block, several blocks
def test_nucleus_sample_matches_reference(vocab, poisoned_empty):
    """The kernel draws the reference's ids: ranges narrowed across a block boundary, greedy rows, rows whose first
    draw is rejected (at the larger vocabulary)."""
    from light_tts.kernels.llm.nucleus_sampling import NUM_META, SampleLaunch, nucleus_sample_ref, nucleus_sample_triton

    logits, packed, seen = nucleus_inputs(32, vocab)
    args = (0.6, 0.8, 1.3)
    launch = SampleLaunch(block_v=1024, num_warps=8)  # 9 blocks of 9000 ids; (3000, 3100) spans two
    ids = nucleus_sample_triton(logits.to(DEVICE), packed.to(DEVICE), seen.to(DEVICE), *args, launch=launch)
    ids_ref = ops.nucleus_sample(logits, packed, seen, *args, use_triton=False)
    assert ids.tolist() == ids_ref.tolist()
    # some rows' first draw is rejected (the rounds after it run too): one round alone keeps their top id instead
    first_round = nucleus_sample_ref(logits, packed[:, : NUM_META + 1], seen, *args)
    assert (first_round != ids_ref).any() or vocab == 300  # 300 peaked logits: every first draw accepted
    lo, hi = packed[:, 2].tolist(), packed[:, 3].tolist()
    assert all(a <= t < b for t, a, b in zip(ids_ref.tolist(), lo, hi)) and ids_ref[1] == 7
    greedy = [i for i in range(32) if i % 4 == 0]
    raw = logits.masked_fill(
        (torch.arange(vocab) < packed[:, 2:3]) | (torch.arange(vocab) >= packed[:, 3:4]), float("-inf")
    )
    assert ids_ref[greedy].tolist() == raw[greedy].argmax(dim=-1).tolist()


def test_nucleus_sample_draws_the_top_p_distribution():
    """The rejection draw on many seeds: only nucleus ids come out, at their renormalised probabilities (the
    repetition penalty and temperature applied first)."""
    from light_tts.kernels.llm.nucleus_sampling import nucleus_sample_ref
    from light_tts.llm.nucleus_sampler import pack_rows

    n, probs = 4000, torch.tensor([0.05, 0.3, 0.02, 0.2, 0.15, 0.11, 0.08, 0.09])
    logits = probs.log().repeat(n, 1)
    seen = torch.zeros(2, 8, dtype=torch.bool)
    seen[1, 1] = True  # id 1 was generated: its (negative) logit is multiplied by the penalty
    packed = pack_rows([1] * n, [[1]] * n, [(0, 8)] * n, [False] * n, list(range(n)))
    ids = nucleus_sample_ref(logits, packed, seen, 0.9, 0.7, 1.5)
    scores = logits[0].clone()
    scores[1] *= 1.5
    p = (scores / 0.9).softmax(dim=0)
    order = p.argsort(descending=True)
    mass_before = p[order].cumsum(0) - p[order]
    nucleus = order[mass_before < 0.7]
    expected = torch.zeros(8)
    expected[nucleus] = p[nucleus] / p[nucleus].sum()
    freq = torch.bincount(ids, minlength=8).float() / n
    assert set(ids.tolist()) == set(nucleus.tolist())
    assert (freq - expected).abs().max() < 0.03, (freq, expected)


def test_decode_attention_launch_is_the_measured_one_per_head_dim():
    """Llama's 128-dim heads take the H100 sweep's 3 pipelining stages; Qwen2's 64 keep the 2 stages their
    numbers were measured with; an unmeasured size gets 2."""
    from light_tts.kernels.llm.decode_attention import split_launch

    assert split_launch(128) == SplitLaunch(block_n=32, num_warps=4, num_stages=3)
    assert split_launch(64) == split_launch(32) == SplitLaunch(block_n=32, num_warps=4, num_stages=2)
