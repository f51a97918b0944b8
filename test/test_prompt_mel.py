"""The 24 kHz prompt mel against upstream's (matcha mel_spectrogram) output on feat_io.pt."""

import numpy as np
import torch

from light_tts.frontend.prompt_mel import hz_to_mel, mel_to_hz, prompt_mel, slaney_mel_filters
from light_tts.model_config import MelConfig


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_prompt_mel_matches_upstream(fixture_dir):
    io = torch.load(fixture_dir / "feat_io.pt", weights_only=False)
    mel = prompt_mel(io["wav24k"], MelConfig())
    assert mel.shape == io["prompt_mel"].shape == (1, 80, io["wav24k"].shape[1] // 480)
    err = rel_l2(mel, io["prompt_mel"])
    print(f"prompt_mel rel L2 {err:.3e}")
    assert err < 1e-6


def test_slaney_scale_points():
    # linear below 1 kHz (3 mels per 200 Hz), 27 mels per factor 6.4 above
    np.testing.assert_allclose(hz_to_mel(np.array([0.0, 200.0, 1000.0, 6400.0])), [0.0, 3.0, 15.0, 42.0], rtol=1e-12)
    hz = np.array([0.0, 440.0, 1000.0, 3000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


def test_slaney_filters_have_unit_area():
    cfg = MelConfig()
    filters = slaney_mel_filters(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
    assert filters.shape == (80, 961) and filters.dtype == np.float32 and (filters >= 0).all()
    bin_hz = cfg.sampling_rate / cfg.n_fft
    # a Slaney-normalised triangle of base b has height 2/b, so its integral over Hz is 1
    areas = filters.sum(axis=1) * bin_hz
    np.testing.assert_allclose(areas[10:], 1.0, rtol=0.05)
    assert filters[:, int(8000 / bin_hz) + 1 :].max() == 0  # nothing above fmax
