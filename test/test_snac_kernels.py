"""The fused SNAC kernels (kernels/codec/snac_ops.py) against their torch references, and the fused decoder
(models/orpheus/snac_fused.py) against the module with the same counter noise: Triton's interpreter on CPU."""

import numpy as np
import pytest
import torch

from light_tts.decode.snac.snac_runner import SNACRunner, decode_rows
from light_tts.kernels.codec import snac_ops
from light_tts.models.orpheus.config import SNACConfig
from light_tts.models.orpheus.snac import SNACDecoder, counter_noise
from light_tts.models.orpheus.snac_fused import FusedSNAC
from light_tts.tools.make_orpheus import snac_state_dict

if not torch.cuda.is_available():
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "the kernels run on CPU only in Triton's interpreter (conftest.py sets it)", allow_module_level=True
        )

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY = SNACConfig(encoder_dim=4, decoder_dim=64)


def args(c: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r, h = torch.randn(2, c, t, generator=g), torch.randn(2, c, t, generator=g)
    bias, alpha1, alpha2 = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5, torch.rand(c, generator=g)
    dw_weight, dw_bias = torch.randn(c, 7, generator=g), torch.randn(c, generator=g)
    return [x.to(DEVICE) for x in (r, h, bias, alpha1, dw_weight, dw_bias, alpha2)]


# channels not a power of two and time steps not a multiple of the tile: the masks at both edges
@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("c,t", [(12, 300), (3, 20)])
def test_unit_in_matches_its_reference(dilation, noise, c, t):
    r, h, bias, alpha1, dw_weight, dw_bias, alpha2 = args(c, t)
    seeds = torch.tensor([123456789, -(2**62) + 5], device=DEVICE)  # a negative seed: its high word is hashed
    noise_args = (seeds, torch.tensor([4, 2**33 + 9], device=DEVICE), 2) if noise else None
    h_bias = None if noise else bias
    got = snac_ops.unit_in_triton(r, h, h_bias, noise_args, alpha1, dw_weight, dw_bias, alpha2, dilation)
    expected = snac_ops.unit_in_ref(r, h, h_bias, noise_args, alpha1, dw_weight, dw_bias, alpha2, dilation)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_snake_in_and_head_match_their_references():
    r, h, bias, alpha, weight, _, _ = args(12, 300, seed=1)
    torch.testing.assert_close(snac_ops.snake_in_triton(r, h, bias, alpha), snac_ops.snake_in_ref(r, h, bias, alpha))
    torch.testing.assert_close(
        snac_ops.snake_in_triton(r, None, None, alpha), snac_ops.snake_in_ref(r, None, None, alpha)
    )
    torch.testing.assert_close(
        snac_ops.head_triton(r, h, bias, alpha, weight, 0.3),
        snac_ops.head_ref(r, h, bias, alpha, weight, 0.3),
        atol=2e-5,
        rtol=1e-5,
    )


def test_the_in_kernel_noise_is_counter_noise():
    """The noise the noise blocks add in the kernel (its key hashed there from seed, counter and block) is what the
    module's counter_noise draws for that block."""
    seeds = torch.tensor([0, 7, 2**40 + 3, -(2**62)], device=DEVICE)
    counters = torch.tensor([4, 4, 100, 5], device=DEVICE)
    ones = torch.ones(4, 3, 50, device=DEVICE)
    for block in range(4):
        expected = counter_noise(seeds, counters)(block, 4, 50)[:, 0]
        # a unit_in whose r is 0 and h is 1 writes x = noise
        x, _ = snac_ops.unit_in_triton(ones * 0, ones, None, (seeds, counters, block), *args(3, 50)[3:], 1)
        torch.testing.assert_close(x[:, 1], expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def model():
    sd = snac_state_dict(TINY, torch.Generator().manual_seed(0))
    return SNACDecoder.from_state_dict(TINY, sd, "random").to(DEVICE)


def test_fused_decoder_equals_the_module(model):
    """Windows of 2 frames and 1, rows with their own seeds and counters (the served 4-frame window only changes
    lengths; the interpreter is slow): the fused path decodes what the module decodes with counter_noise."""
    rng = np.random.default_rng(0)
    for num_frames, seeds, counters in ((2, [1, 2**40 + 5], [4, 9]), (1, [3], [1])):
        frames = torch.from_numpy(rng.integers(0, 4096, (len(seeds), num_frames, 7))).to(DEVICE)
        seeds_t, counters_t = torch.tensor(seeds, device=DEVICE), torch.tensor(counters, device=DEVICE)
        expected = decode_rows(model, frames, seeds_t, counters_t, torch.float32)
        got = decode_rows(model, frames, seeds_t, counters_t, torch.float32, FusedSNAC(model))
        assert got.shape == (len(seeds), 2048 * num_frames)
        assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_the_runner_serves_the_fused_path(model):
    """SNACRunner(use_fused=True) decodes with the fused kernels (the module by default), and its audio is the
    module's."""
    assert SNACRunner(model, DEVICE, 2, use_graphs=False).fused is None
    fused = SNACRunner(model, DEVICE, 2, use_graphs=False, use_fused=True)
    assert fused.fused is not None
    with pytest.raises(AssertionError):
        SNACRunner(model, DEVICE, 2, use_graphs=False, dtype=torch.float16, use_fused=True)
    frames = np.random.default_rng(1).integers(0, 4096, (1, 2, 7))
    expected = SNACRunner(model, DEVICE, 2, use_graphs=False, use_fused=False).decode(frames, [5], [2])
    got = fused.decode(frames, [5], [2])
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_the_engine_decodes_with_the_fused_kernels_when_asked(model, orpheus_dir):
    """SNACEngine(fused=True) (--snac_kernels fused on a GPU) runs the fused path and gives a stream the module
    engine's audio; the family builds it only for a CUDA device (a CPU server decodes with the module)."""
    from light_tts.decode.snac.snac_engine import SNACEngine
    from light_tts.families.orpheus import FAMILY
    from light_tts.model_config import QwenConfig
    from light_tts.models.orpheus.config import OrpheusConfig, OrpheusTokens

    tokens = OrpheusTokens(0, 0, 0, 0, 0, 0, 0, 0, 0, first_audio=1000)
    cfg = OrpheusConfig(model_dir=None, body=QwenConfig(), tokens=tokens, snac=TINY)
    ids = [1000 + 4096 * (i % 7) + int(c) for i, c in enumerate(np.random.default_rng(2).integers(0, 4096, 14))]
    audio = {}
    for fused in (False, True):
        engine = SNACEngine(cfg, DEVICE, model=model, max_batch_size=2, fused=fused)
        assert (engine.runner.fused is not None) == fused
        engine.add_request("a", seed=9)
        engine.push_tokens("a", ids, is_last=True)
        outputs = engine.step()
        assert [o.finished for o in outputs] == [True]
        audio[fused] = outputs[0].audio
    assert len(audio[True]) == 2 * 2048
    np.testing.assert_allclose(audio[True], audio[False], atol=2e-5)
    released = FAMILY.load_model_config(orpheus_dir)
    assert FAMILY.decode_engine(released, device="cpu", snac_kernels="fused").runner.fused is None
