"""Prompt audio decoding: request bytes (wav/flac/ogg/mp3, any rate and channel count) -> float32 mono."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

from light_tts.errors import AudioError, LightTTSError

MAX_PROMPT_SECONDS = 30.0  # the speech tokenizer accepts at most 30 s (upstream asserts the same)


def _reason(e: Exception) -> str:
    """libsndfile's own message, without the file-object repr that soundfile prefixes."""
    return getattr(e, "error_string", None) or str(e)


def resample(x: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """High-quality (soxr VHQ) resampling of a mono float signal."""
    if from_sr == to_sr:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x, from_sr, to_sr, quality="VHQ").astype(np.float32, copy=False)


def decode_audio(
    data: bytes,
    max_seconds: float = MAX_PROMPT_SECONDS,
    name: str = "prompt audio",
    too_long: type[LightTTSError] = AudioError,
) -> tuple[np.ndarray, int]:
    """Decode to float32 mono at the file's own sample rate; raises AudioError for anything unusable, `too_long`
    for audio over max_seconds (`name` says which audio in the messages)."""
    if not data:
        raise AudioError(f"{name} is empty (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{name} is not a readable audio file (wav/flac/ogg/mp3): {_reason(e)}") from e
    # check the length from the header before decoding, so a long upload costs nothing
    if info.frames > 0 and info.frames / info.samplerate > max_seconds:
        raise too_long(f"{name} is {info.frames / info.samplerate:.1f} s; the limit is {max_seconds:g} s")
    try:
        # always_2d: [frames, channels]; integer formats are scaled to [-1, 1)
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{name} could not be decoded: {_reason(e)}") from e
    if x.shape[0] == 0:
        raise AudioError(f"{name} has no samples")
    if x.shape[0] / sr > max_seconds:
        raise too_long(f"{name} is {x.shape[0] / sr:.1f} s; the limit is {max_seconds:g} s")
    mono = x.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    return mono, sr


def load_audio(data: bytes, target_sr: int, max_seconds: float = MAX_PROMPT_SECONDS) -> np.ndarray:
    """Decode prompt audio bytes to float32 mono at target_sr."""
    x, sr = decode_audio(data, max_seconds)
    return resample(x, sr, target_sr)
