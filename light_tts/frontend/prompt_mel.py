"""The 24 kHz prompt mel that conditions the flow: log of a Slaney mel filterbank over a magnitude STFT."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from light_tts.model_config import MelConfig

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_HZ_PER_MEL = 200.0 / 3
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _HZ_PER_MEL
    is_log = hz >= _LOG_START_HZ
    return np.where(is_log, _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _HZ_PER_MEL
    is_log = mel >= _LOG_START_MEL
    return np.where(is_log, _LOG_START_HZ * np.exp(_LOG_STEP * (mel - _LOG_START_MEL)), hz)


def slaney_mel_filters(sampling_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[num_mels, n_fft//2+1] float32 triangles on the Slaney scale, each scaled to unit area (librosa's
    `filters.mel(norm='slaney', htk=False)`, rounded to float32 at the same two points)."""
    fft_hz = np.linspace(0, sampling_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (num_mels+2, F)
    filters = np.zeros((num_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(num_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        filters[i] = np.maximum(0, np.minimum(rising, falling))
    filters *= (2.0 / (edges_hz[2 : num_mels + 2] - edges_hz[:num_mels]))[:, None]
    return filters


@lru_cache(maxsize=4)
def _mel_basis(cfg: MelConfig) -> torch.Tensor:
    return torch.from_numpy(slaney_mel_filters(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, cfg.fmin, cfg.top_hz))


def prompt_mel(wav24k: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """wav24k [1, T] float in [-1, 1] at cfg.sampling_rate -> log mel [1, num_mels, frames], one frame per hop."""
    pad = (cfg.n_fft - cfg.hop_size) // 2  # centres frames without center=True's n_fft/2 padding
    wav = F.pad(wav24k.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(cfg.win_size, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(
        wav,
        cfg.n_fft,
        hop_length=cfg.hop_size,
        win_length=cfg.win_size,
        window=window,
        center=cfg.center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)  # (1, F, frames, 2)
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    mel = torch.matmul(_mel_basis(cfg).to(device=wav.device, dtype=wav.dtype), magnitude)
    return torch.log(torch.clamp(mel, min=1e-5))
