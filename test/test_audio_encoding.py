"""Response-format encoders: every format streams (bytes from the first chunk on) and decodes back, with the
right rate and duration, through decoders other than the one path that wrote it (FFmpeg's decoders through
PyAV, libsndfile's through soundfile, and Debian's ffprobe when installed)."""

import io
import json
import shutil
import struct
import subprocess

import av
import numpy as np
import pytest
import soundfile as sf

from light_tts.server.api.audio_encoding import CONTENT_TYPES, RESPONSE_FORMATS, encode_file, make_encoder

RATE = 24000
TONE_HZ = 440.0
# libsndfile reads these streams (MP3 through mpg123, Ogg/Opus through libopus); AAC it does not, and a
# streamed FLAC (sample count unknown, as `ffmpeg -f flac pipe:` writes it too) makes it seek past the end.
SOUNDFILE_FORMATS = ("mp3", "opus", "wav")
# Decoded samples beyond the input: encoder delay and frame padding, which raw MP3 frames and ADTS do not
# signal. Ogg/Opus signals its pre-skip and end, FLAC and WAV are exact.
PADDING_S = {"mp3": 0.12, "aac": 0.1, "opus": 0.01, "flac": 0.0, "wav": 0.0, "pcm": 0.0}


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)


def chunks_of(pcm: np.ndarray, sizes: list[int]) -> list[bytes]:
    """Uneven chunk sizes, as the decode engine's growing hops give."""
    bounds = np.cumsum([0, *sizes])
    return [pcm[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])] + [pcm[bounds[-1] :].tobytes()]


def decode_pyav(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, RATE
    with av.open(io.BytesIO(data)) as container:
        frames = [f for f in container.decode(audio=0)]
    samples = np.concatenate([f.to_ndarray().astype(np.float32).reshape(-1) for f in frames])
    if frames[0].format.name.startswith("s16"):
        samples /= 32768
    return samples, frames[0].sample_rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def ffprobe(data: bytes) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels:frame=nb_samples",
            "-of",
            "json",
            "-i",
            "pipe:0",
        ],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def streamed() -> dict[str, tuple[list[bytes], bytes]]:
    """fmt -> (the bytes each encode() call returned, finish()'s bytes) for 3 s of tone in uneven chunks."""
    pcm_chunks = chunks_of(tone(3.0), [RATE, RATE // 2 + 7, RATE // 3])
    out = {}
    for fmt in RESPONSE_FORMATS:
        encoder = make_encoder(fmt, sample_rate=RATE)
        pieces = [encoder.encode(c) for c in pcm_chunks]
        out[fmt] = pieces, encoder.finish()
    return out


@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
def test_first_chunk_already_carries_audio(streamed, fmt):
    """The bytes returned for the first 1 s chunk decode, on their own, to most of that second."""
    pieces, _ = streamed[fmt]
    assert len(pieces[0]) > 0
    samples, rate = decode_pyav(pieces[0], fmt)
    assert len(samples) / rate >= 0.8, f"{fmt}: first chunk gave only {len(samples) / rate:.3f} s"


@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
def test_stream_decodes_to_input_rate_duration_and_pitch(streamed, fmt):
    pieces, tail = streamed[fmt]
    samples, rate = decode_pyav(b"".join(pieces) + tail, fmt)
    # Opus always decodes at 48 kHz (RFC 7845); the stream header carries the 24 kHz input rate.
    assert rate == (48000 if fmt == "opus" else RATE)
    duration = len(samples) / rate
    assert 3.0 - 1e-9 <= duration <= 3.0 + PADDING_S[fmt] + 1e-9, f"{fmt}: {duration:.4f} s"
    assert dominant_hz(samples, rate) == pytest.approx(TONE_HZ, abs=2.0)


@pytest.mark.parametrize("fmt", ["flac", "wav", "pcm"])
def test_lossless_stream_is_bit_exact(streamed, fmt):
    pieces, tail = streamed[fmt]
    samples, _ = decode_pyav(b"".join(pieces) + tail, fmt)
    np.testing.assert_array_equal(np.round(samples * 32768).astype(np.int16), tone(3.0))


@pytest.mark.parametrize("fmt", SOUNDFILE_FORMATS)
def test_libsndfile_decodes_the_stream(streamed, fmt):
    pieces, tail = streamed[fmt]
    samples, rate = sf.read(io.BytesIO(b"".join(pieces) + tail), dtype="float32")
    assert rate == RATE  # for Opus libsndfile decodes at the input rate the Ogg header carries
    assert 3.0 - 0.01 <= len(samples) / rate <= 3.0 + PADDING_S[fmt] + 0.01
    assert dominant_hz(samples, rate) == pytest.approx(TONE_HZ, abs=2.0)


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="Debian's ffmpeg package is not installed")
@pytest.mark.parametrize("fmt", [f for f in RESPONSE_FORMATS if f != "pcm"])
def test_ffprobe_reads_the_stream(streamed, fmt):
    pieces, tail = streamed[fmt]
    info = ffprobe(b"".join(pieces) + tail)
    (stream,) = info["streams"]
    expected_codec = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "pcm_s16le"}[fmt]
    assert (stream["codec_name"], stream["channels"]) == (expected_codec, 1)
    rate = int(stream["sample_rate"])
    assert rate == (48000 if fmt == "opus" else RATE)
    duration = sum(f["nb_samples"] for f in info["frames"]) / rate
    assert 3.0 - 0.01 <= duration <= 3.0 + PADDING_S[fmt] + 0.01, f"{fmt}: {duration:.4f} s"


def test_streamed_wav_header_says_unknown_length(streamed):
    """A streamed WAV cannot know its size; 0xFFFFFFFF is what FFmpeg writes to a pipe and players accept."""
    pieces, _ = streamed["wav"]
    header = pieces[0][:44]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack("<I", header[4:8])[0] == struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF


@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
def test_whole_file_has_exact_headers_and_duration(fmt):
    pcm = tone(1.5)
    data = encode_file(fmt, pcm.tobytes(), sample_rate=RATE)
    samples, rate = decode_pyav(data, fmt)
    # With a seekable output MP3 gets its gapless (LAME) header, so decoders drop the padding too.
    slack = 0.0 if fmt in ("mp3", "flac", "wav", "pcm") else PADDING_S[fmt]
    assert 1.5 <= len(samples) / rate <= 1.5 + slack + 1e-9
    if fmt == "wav":
        riff_size, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
        assert (riff_size, data_size) == (len(data) - 8, 2 * len(pcm))
    if fmt == "flac":  # STREAMINFO carries the sample count, and libFLAC (through libsndfile) agrees
        np.testing.assert_array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], pcm)


def test_content_types_match_formats():
    assert {fmt: make_encoder(fmt).content_type for fmt in RESPONSE_FORMATS} == CONTENT_TYPES
    assert CONTENT_TYPES["mp3"] == "audio/mpeg" and CONTENT_TYPES["opus"] == "audio/ogg"


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="unknown response format 'ogg'"):
        make_encoder("ogg")
    encoder = make_encoder("mp3")
    with pytest.raises(ValueError, match="even number of bytes"):
        encoder.encode(b"\x00\x01\x02")
    assert encoder.encode(b"") == b""
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.encode(b"\x00\x00")
