"""RAS / greedy sampling: nucleus membership, the repetition fallback, rejection of special ids, per-seed
determinism."""

import numpy as np
import pytest
import torch

from light_tts.model_config import RASConfig
from light_tts.sampling import GreedySampler, RASSampler, counter_uniform_bits, draw, nucleus

CFG = RASConfig(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)


def logprobs_from(probs: dict[int, float], vocab: int = 64) -> torch.Tensor:
    """Log-probs with the given mass on chosen ids and the rest spread evenly over the others."""
    p = torch.zeros(vocab)
    rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
    p[:] = rest
    for i, v in probs.items():
        p[i] = v
    return p.log()


def test_nucleus_keeps_the_crossing_candidate():
    weights, ids = nucleus(torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15]), top_p=0.8, top_k=25)
    # mass before each candidate: 0, 0.5, 0.7 (< 0.8: kept, crosses to 0.85), 0.85 (dropped)
    assert ids[:3].tolist() == [1, 3, 4]
    assert torch.equal(weights > 0, torch.tensor([True, True, True, False, False]))


def test_nucleus_is_capped_at_top_k():
    probs = torch.linspace(2.0, 1.0, 100).softmax(0)  # nearly flat: top_p alone would keep ~80
    weights, ids = nucleus(probs, top_p=0.8, top_k=25)
    assert int((weights > 0).sum()) == 25 and ids[:25].tolist() == list(range(25))


def test_draw_is_inverse_cdf_and_skips_zero_weights():
    weights = torch.tensor([0.0, 1.0, 0.0, 3.0])
    picks = [int(draw(weights, torch.tensor(u))) for u in (0.0, 0.2499, 0.25, 0.999)]
    assert picks == [1, 1, 3, 3]


def test_ras_never_samples_outside_the_nucleus():
    lp = logprobs_from({11: 0.5, 40: 0.2, 3: 0.15, 20: 0.1})  # nucleus {11, 40, 3}
    counts = torch.zeros(64)
    for seed in range(3000):  # one draw per seed: the uniforms of (seed, step 0, attempt 0)
        counts[RASSampler(CFG, seed=seed).sample(lp, decoded_tokens=[])] += 1
    assert set(torch.nonzero(counts).flatten().tolist()) == {3, 11, 40}
    # drawn in proportion to the kept probabilities (0.5 : 0.2 : 0.15)
    expected = torch.tensor([0.5, 0.2, 0.15]) / 0.85
    observed = counts[[11, 40, 3]] / counts.sum()
    assert torch.allclose(observed, expected, atol=0.03)


def test_repetition_fallback_fires_exactly_on_the_window_condition():
    lp = logprobs_from({7: 0.9})  # the nucleus is {7} alone
    sampler = RASSampler(CFG, seed=1)
    outside_window = [7] + [1] * 10  # the only 7 is 11 tokens back
    assert all(sampler.sample(lp, outside_window) == 7 for _ in range(50))
    inside_window = [1] * 9 + [7]
    # the fallback bans the repeated id and draws from the full distribution
    assert all(sampler.sample(lp, inside_window) != 7 for _ in range(50))

    twice = RASSampler(RASConfig(top_p=0.8, top_k=25, win_size=10, tau_r=0.2), seed=2)  # needs 2 repeats
    assert all(twice.sample(lp, [7] + [1] * 9) == 7 for _ in range(50))
    assert all(twice.sample(lp, [7, 7] + [1] * 8) != 7 for _ in range(50))


def test_rejected_ids_are_resampled():
    lp = logprobs_from({62: 0.5, 5: 0.4})  # id 62 plays eos: nucleus {62, 5}
    sampler = RASSampler(CFG, seed=3)
    picks = {sampler.sample(lp, [], reject_from=61) for _ in range(200)}
    assert picks == {5}
    only_special = logprobs_from({62: 0.95})
    with pytest.raises(RuntimeError):
        sampler.sample(only_special, [], reject_from=61)


def test_attempts_draw_counter_uniforms():
    """Attempt a of step s uses counter_uniforms(seed, s, a): u0 picks from the nucleus by inverse CDF."""
    import numpy as np

    from light_tts.sampling import counter_uniforms

    lp = torch.randn(300, generator=torch.Generator().manual_seed(0)).mul(2).log_softmax(0)
    decoded = [1, 2, 3]
    for seed in (0, 5, 2**40 + 3):
        u = counter_uniforms(np.array([seed], dtype=np.uint64), np.array([len(decoded)], dtype=np.uint64), 0)[0]
        weights, ids = nucleus(lp.softmax(0), CFG.top_p, CFG.top_k)
        expected = int(ids[draw(weights, u[0])])
        assert RASSampler(CFG, seed=seed).sample(lp, decoded) == expected
    # a different step draws different uniforms
    a = counter_uniforms(np.array([9], dtype=np.uint64), np.array([0, 1], dtype=np.uint64), 0)
    assert not torch.equal(a[0], a[1]) and ((a >= 0) & (a < 1)).all()


def decode_sequence(sampler, steps_logprobs, other=None):
    out, other_out = [], []
    for lp in steps_logprobs:
        out.append(sampler.sample(lp, out))
        if other is not None:  # another request sampled in between must not disturb this one
            other_out.append(other.sample(lp, other_out))
    return out


def test_same_seed_same_tokens_regardless_of_other_requests():
    gen = torch.Generator().manual_seed(123)
    steps = [torch.randn(200, generator=gen).mul(3).log_softmax(0) for _ in range(60)]
    alone = decode_sequence(RASSampler(CFG, seed=42), steps)
    torch.manual_seed(999)  # the global RNG plays no part
    interleaved = decode_sequence(RASSampler(CFG, seed=42), steps, other=RASSampler(CFG, seed=7))
    assert alone == interleaved
    assert decode_sequence(RASSampler(CFG, seed=43), steps) != alone


def test_greedy_is_argmax_over_allowed_ids():
    lp = logprobs_from({62: 0.5, 5: 0.3})
    assert GreedySampler().sample(lp, []) == 62
    assert GreedySampler().sample(lp, [], reject_from=61) == 5


def test_many_attempts_hash_as_each_attempt_alone():
    """counter_uniform_bits(..., attempt, n) is the n attempts' pairs side by side (the nucleus sampler hashes its 16
    uniforms in one call), and the values stay what they were (a stream's audio depends on them)."""
    seeds, steps = np.array([1, 2**40 + 7, 3], dtype=np.uint64), np.array([0, 5, 999], dtype=np.uint64)
    many = counter_uniform_bits(seeds, steps, 0, 8)
    assert many.shape == (3, 16)
    np.testing.assert_array_equal(many, np.concatenate([counter_uniform_bits(seeds, steps, a) for a in range(8)], 1))
    np.testing.assert_array_equal(counter_uniform_bits(seeds, steps, 2, 3), many[:, 4:10])
    assert many[1, :4].tolist() == [2483562, 6856295, 9146255, 11170968]
