"""Prompt audio decoding: formats, sample rates, channel counts, resampling accuracy and every rejection."""

import io

import numpy as np
import pytest
import soundfile as sf

from light_tts.errors import AudioError
from light_tts.frontend import audio as audio_module
from light_tts.frontend.audio import decode_audio, load_audio, resample

TONE_HZ = 440.0


def tone(sr: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def encode(x: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


LOSSLESS = [("WAV", "PCM_16", 1e-3), ("WAV", "PCM_24", 1e-4), ("WAV", "FLOAT", 1e-4), ("FLAC", "PCM_16", 1e-3)]
LOSSY = [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
RATES = [8000, 16000, 44100, 48000]


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("fmt,subtype,tol", LOSSLESS)
def test_lossless_formats_resample_to_exact_tone(fmt, subtype, tol, sr):
    y = load_audio(encode(tone(sr), sr, fmt, subtype), 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == 16000
    inner = slice(400, -400)  # resampler edge transients aside
    np.testing.assert_allclose(y[inner], tone(16000)[inner], atol=tol + 2e-4)


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("fmt,subtype", LOSSY)
def test_lossy_formats_keep_pitch_and_length(fmt, subtype, sr):
    y = load_audio(encode(tone(sr), sr, fmt, subtype), 24000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 24000) < 0.06 * 24000  # mp3 frames add encoder delay/padding
    assert abs(peak_hz(y, 24000) - TONE_HZ) < 3
    assert 0.3 < np.abs(y).max() < 0.7


def test_int16_scaling_and_native_rate():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    x, sr = decode_audio(encode(np.tile(pcm, 4000), 16000, "WAV", "PCM_16"))
    assert sr == 16000
    np.testing.assert_allclose(x[:4], pcm / 32768.0, atol=1e-7)


def test_stereo_is_averaged():
    left, right = tone(16000), -0.5 * tone(16000)
    y = load_audio(encode(np.stack([left, right], axis=1), 16000, "WAV", "FLOAT"), 16000)
    np.testing.assert_allclose(y, 0.5 * (left + right), atol=1e-7)


def test_resample_matches_ideal_tone():
    y = resample(tone(48000, 2.0), 48000, 16000)
    assert y.dtype == np.float32 and len(y) == 32000
    np.testing.assert_allclose(y[400:-400], tone(16000, 2.0)[400:-400], atol=2e-4)
    x = tone(16000)
    assert np.array_equal(resample(x, 16000, 16000), x)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"this is not audio at all, just some text bytes" * 10, "not a readable audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable audio file"),
    ],
)
def test_unreadable_bytes_are_rejected(data, message):
    with pytest.raises(AudioError, match=message):
        load_audio(data, 16000)


def test_zero_length_audio_is_rejected():
    with pytest.raises(AudioError, match="no samples"):
        load_audio(encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"), 16000)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(bad):
    x = tone(16000)
    x[100] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(encode(x, 16000, "WAV", "FLOAT"), 16000)


def test_too_long_audio_is_rejected_from_the_header(monkeypatch):
    data = encode(np.zeros(60 * 8000, np.float32), 8000, "WAV", "PCM_16")
    assert len(load_audio(data, 16000, max_seconds=61)) == 60 * 16000

    def no_decoding(*args, **kwargs):
        raise AssertionError("a file over the limit must be refused before its samples are decoded")

    monkeypatch.setattr(audio_module.sf, "read", no_decoding)
    with pytest.raises(AudioError, match=r"prompt audio is 60.0 s; the limit is 30 s"):
        load_audio(data, 16000)
