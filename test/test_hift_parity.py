"""HiFT vocoder against upstream outputs (flow_hift_io.pt, stream_io.pt), its weight-norm key forms, batching and
the streaming overlap arithmetic."""

import numpy as np
import pytest
import torch

from light_tts.model_config import F0PredictorConfig, HiFTConfig
from light_tts.models.cosyvoice2.hift import HiFT, HiFTStreamState, hift_stream_chunk
from light_tts.models.cosyvoice2.hift.streaming import MEL_CACHE_LEN

CFG = HiFTConfig(base_channels=64, nb_harmonics=8, f0_predictor=F0PredictorConfig(cond_channels=64))
SPF = CFG.samples_per_frame  # 480
OVERLAP = MEL_CACHE_LEN * SPF  # 3840


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def hift(fixture_dir) -> HiFT:
    return HiFT.from_checkpoint(CFG, fixture_dir / "hift.pt")


@pytest.fixture(scope="module")
def io(fixture_dir) -> dict:
    return torch.load(fixture_dir / "flow_hift_io.pt", weights_only=False)


def test_inference_matches_upstream(hift, io):
    generator = torch.Generator().manual_seed(io["hift_seed"])
    speech, source = hift.inference(io["hift_mel_in"], None, generator)
    speech_err, source_err = rel_l2(speech, io["hift_speech"]), rel_l2(source, io["hift_source"])
    print(f"hift speech rel L2 {speech_err:.3e}, source rel L2 {source_err:.3e}")
    assert speech.shape == (1, 120 * SPF) and source.shape == (1, 1, 120 * SPF)
    assert speech_err < 1e-5 and source_err < 1e-5


def test_legacy_weight_norm_keys_load_the_same(hift, io, fixture_dir, tmp_path):
    state = torch.load(fixture_dir / "hift.pt", weights_only=True)
    legacy = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): v
        for k, v in state.items()
    }
    assert sum(k.endswith(".weight_g") for k in legacy) > 50
    torch.save(legacy, tmp_path / "hift_legacy.pt")
    legacy_model = HiFT.from_checkpoint(CFG, tmp_path / "hift_legacy.pt")
    unfolded = HiFT.from_checkpoint(CFG, fixture_dir / "hift.pt", fold=False)
    outs = []
    for model in (hift, legacy_model, unfolded):
        outs.append(model.inference(io["hift_mel_in"][:, :, :40], None, torch.Generator().manual_seed(7))[0])
    assert torch.equal(outs[0], outs[1])
    assert rel_l2(outs[2], outs[0]) < 1e-6


def test_first_stream_chunk_matches_upstream(hift, io, fixture_dir):
    stream = torch.load(fixture_dir / "stream_io.pt", weights_only=False)
    generator = torch.Generator().manual_seed(stream["rng_seed_before_stream"])
    audio = hift_stream_chunk(hift, HiFTStreamState(), io["mel_stream_chunk0"], False, generator)
    assert audio.shape == stream["chunks"][0].shape
    assert rel_l2(audio, stream["chunks"][0]) < 1e-5


def test_batch_draws_per_request(hift, io):
    mel = io["hift_mel_in"][:, :, :40]
    mels = torch.cat([mel, mel.flip(-1)])  # (2, 80, T)
    cache = torch.randn(2, 1, OVERLAP, generator=torch.Generator().manual_seed(3)) * 0.1
    batched, batched_src = hift.inference(mels, cache, [torch.Generator().manual_seed(s) for s in (1, 2)])
    for b, seed in enumerate((1, 2)):
        single, single_src = hift.inference(mels[b : b + 1], cache[b : b + 1], torch.Generator().manual_seed(seed))
        assert rel_l2(batched[b : b + 1], single) < 1e-5
        assert rel_l2(batched_src[b : b + 1], single_src) < 1e-6
        assert torch.equal(single_src[:, :, :OVERLAP], cache[b : b + 1])  # cached excitation replaces the head


def test_stream_chunks_add_up_to_all_frames(hift, io):
    mel = io["hift_mel_in"]  # 120 frames
    state, generator, pieces = HiFTStreamState(), torch.Generator().manual_seed(0), []
    for start, end in ((0, 30), (30, 75), (75, 120)):
        pieces.append(hift_stream_chunk(hift, state, mel[:, :, start:end], end == 120, generator))
    assert [p.shape[1] for p in pieces] == [30 * SPF - OVERLAP, 45 * SPF, 45 * SPF + OVERLAP]
    assert sum(p.shape[1] for p in pieces) == 120 * SPF and state.mel is None


class StubVocoder:
    """Deterministic stand-in for HiFT: audio depends on the mel frames it sees and on the cached source."""

    samples_per_frame = SPF

    def __init__(self):
        self.seen_cache = []

    def inference(self, mel, cache_source, generator, noise_keys=None):
        self.seen_cache.append(None if cache_source is None else cache_source.clone())
        frames = mel[:, 0, :].repeat_interleave(SPF, dim=1)  # (1, n*SPF)
        speech = frames + 1e-4 * torch.arange(frames.shape[1], dtype=mel.dtype)
        return speech, (speech * 2)[:, None]


def numpy_stream(chunks: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Upstream token2wav's HiFT arithmetic written out over the stub's outputs: (emitted audio, cached sources)."""
    window = np.hamming(2 * OVERLAP)
    out, sources, cache_mel, held = [], [], None, None
    for i, mel0 in enumerate(chunks):
        row = mel0 if cache_mel is None else np.concatenate([cache_mel, mel0])
        speech = np.repeat(row, SPF) + 1e-4 * np.arange(row.size * SPF, dtype=np.float32)
        speech = speech.astype(np.float32)
        sources.append(2 * speech[-OVERLAP:])
        if held is not None:
            speech[:OVERLAP] = (speech[:OVERLAP] * window[:OVERLAP] + held * window[OVERLAP:]).astype(np.float32)
        if i == len(chunks) - 1:
            out.append(speech)
        else:
            cache_mel, held = row[-MEL_CACHE_LEN:], speech[-OVERLAP:].copy()
            out.append(speech[:-OVERLAP])
    return out, sources[:-1]


def test_stream_cross_fade_matches_numpy():
    rng = np.random.default_rng(0)
    lengths = (20, 9, 33, 12)
    mels = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    stub, state = StubVocoder(), HiFTStreamState()
    got = []
    for i, m in enumerate(mels):
        mel = torch.zeros(1, 80, m.size)
        mel[0, 0] = torch.from_numpy(m)
        got.append(hift_stream_chunk(stub, state, mel, i == len(mels) - 1, None)[0].numpy())
    want, want_sources = numpy_stream(mels)
    assert sum(g.size for g in got) == SPF * sum(lengths)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert stub.seen_cache[0] is None
    for want_source, seen in zip(want_sources, stub.seen_cache[1:]):  # the previous call's last 3840 source samples
        np.testing.assert_array_equal(seen[0, 0].numpy(), want_source)


def test_speed_change_resamples_mel(hift, io):
    mel = io["hift_mel_in"]
    audio = hift_stream_chunk(hift, HiFTStreamState(), mel, True, torch.Generator().manual_seed(0), speed=1.5)
    assert audio.shape == (1, int(120 / 1.5) * SPF)
    with pytest.raises(ValueError):
        hift_stream_chunk(hift, HiFTStreamState(), mel, False, None, speed=1.5)
