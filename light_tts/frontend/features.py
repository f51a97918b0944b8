"""Prompt features on 16 kHz audio: Whisper log-mel for the speech tokenizer, Kaldi fbank for CAM++."""

from __future__ import annotations

from functools import lru_cache

import kaldi_native_fbank as knf
import numpy as np
import torch

from light_tts.frontend.prompt_mel import slaney_mel_filters

SAMPLE_RATE = 16000  # the speech tokenizer and CAM++ both take 16 kHz audio
WHISPER_N_FFT = 400
WHISPER_HOP = 160


@lru_cache(maxsize=4)
def whisper_mel_filters(n_mels: int) -> torch.Tensor:
    """Whisper's filterbank: librosa.filters.mel(sr=16000, n_fft=400, n_mels) (Slaney scale and area norm)."""
    return torch.from_numpy(slaney_mel_filters(SAMPLE_RATE, WHISPER_N_FFT, n_mels, 0.0, SAMPLE_RATE / 2.0))


def whisper_log_mel(wav16k: np.ndarray, n_mels: int = 128) -> torch.Tensor:
    """Whisper's log_mel_spectrogram: [T] 16 kHz audio -> [1, n_mels, T // 160], values about in [-1, 1.5]."""
    audio = torch.from_numpy(np.ascontiguousarray(wav16k, dtype=np.float32))
    window = torch.hann_window(WHISPER_N_FFT)
    stft = torch.stft(audio, WHISPER_N_FFT, WHISPER_HOP, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # whisper drops the last (centre-padded) frame
    log_spec = torch.clamp(whisper_mel_filters(n_mels) @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)  # 80 dB dynamic range below the peak
    return ((log_spec + 4.0) / 4.0).unsqueeze(0)


def kaldi_fbank(wav16k: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """[T] 16 kHz audio -> [frames, num_mel_bins] log fbank, as torchaudio.compliance.kaldi.fbank(dither=0)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_mel_bins
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, np.ascontiguousarray(wav16k, dtype=np.float32))
    fbank.input_finished()
    frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
    if not frames:
        return np.zeros((0, num_mel_bins), dtype=np.float32)
    return np.stack(frames).astype(np.float32)


def speaker_features(wav16k: np.ndarray) -> np.ndarray:
    """CAM++ input: 80-bin Kaldi fbank with its per-bin mean over time removed, [frames, 80]."""
    feats = kaldi_fbank(wav16k, 80)
    return feats - feats.mean(axis=0, keepdims=True)
