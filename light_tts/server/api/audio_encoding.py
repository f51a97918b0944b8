"""Audio encoders for the OpenAI-style `response_format`s: int16 mono PCM chunks in, container bytes out.

A streaming response encodes each chunk as it arrives and sends what the encoder returned at once, so the
first bytes leave with the first chunk. The output goes to a write-only sink, which FFmpeg treats as a pipe:
headers that are normally patched at the end say "unknown length" instead (WAV sizes 0xFFFFFFFF, FLAC
STREAMINFO with 0 samples, MP3 without a Xing frame), as FFmpeg writes for `-f wav pipe:`. A whole-file
encode (`encode_file`) uses a seekable buffer, so the same muxers write exact headers.

Every encoder holds back a little audio that completes its next frame: MP3 ~1.2k samples, AAC 1024, FLAC one
block (2304 at 24 kHz), Opus up to one Ogg page (`OGG_PAGE_US`); `finish()` returns the rest.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# Ogg/Opus is served as audio/ogg: the IANA type of an Ogg file (RFC 7845), the one browsers' canPlayType()
# knows; audio/opus names the RTP payload (RFC 7587). pcm is raw little-endian int16 with no header.
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

# A page is written when it holds this much audio: 28 bytes of page header per 100 ms (~7% at 32 kb/s)
# against at most 100 ms of a chunk waiting for the next one. FFmpeg's default is 1 s.
OGG_PAGE_US = 100_000


@dataclass(frozen=True)
class CodecChoice:
    muxer: str
    codec: str
    bit_rate: int | None  # None: lossless
    options: dict[str, str] = field(default_factory=dict)  # muxer options
    streaming_options: dict[str, str] = field(default_factory=dict)  # extra muxer options when writing a pipe


# Bit rates suit 24 kHz mono speech. MP3 gets no ID3 tag; its Xing frame (gapless info) needs a seekable
# output, since it is written last.
CODECS = {
    "mp3": CodecChoice("mp3", "libmp3lame", 64_000, {"id3v2_version": "0"}, {"write_xing": "0"}),
    "opus": CodecChoice("ogg", "libopus", 32_000, {"page_duration": str(OGG_PAGE_US)}),
    "aac": CodecChoice("adts", "aac", 64_000),
    "flac": CodecChoice("flac", "flac", None),
    "wav": CodecChoice("wav", "pcm_s16le", None),
}


class PipeSink:
    """Write-only file object: without seek() FFmpeg writes a stream that never needs patching."""

    def __init__(self):
        self.pending = bytearray()

    def write(self, data) -> int:
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out


class PcmEncoder:
    """`pcm`: the samples as they are."""

    content_type = CONTENT_TYPES["pcm"]

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    def encode(self, pcm: bytes) -> bytes:
        check_pcm(pcm)
        return bytes(pcm)

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class AvEncoder:
    """One FFmpeg encoder + muxer (PyAV) fed with int16 mono chunks."""

    def __init__(self, fmt: str, sample_rate: int, seekable: bool = False):
        import av  # FFmpeg; imported here so that processes that never encode do not load it

        choice = CODECS[fmt]
        self.content_type = CONTENT_TYPES[fmt]
        self.sample_rate = sample_rate
        self.sink = io.BytesIO() if seekable else PipeSink()
        # "+bitexact" leaves FFmpeg's version string out of the headers: equal input gives equal bytes.
        options = {"fflags": "+bitexact", **choice.options, **({} if seekable else choice.streaming_options)}
        self.container = av.open(self.sink, mode="w", format=choice.muxer, options=options)
        self.stream = self.container.add_stream(choice.codec, rate=sample_rate, layout="mono")
        if choice.bit_rate is not None:
            self.stream.bit_rate = choice.bit_rate
        self.num_samples = 0
        self.is_open = True
        self._av = av

    def _take(self) -> bytes:
        return self.sink.take() if isinstance(self.sink, PipeSink) else b""

    def encode(self, pcm: bytes) -> bytes:
        check_pcm(pcm)
        if not self.is_open:
            raise RuntimeError("encode() after finish()")
        if not pcm:
            return b""
        import numpy as np

        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)  # (channels=1, T), packed s16
        frame = self._av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self.num_samples  # in 1/sample_rate units, the stream's time base
        self.num_samples += samples.shape[1]
        # PyAV converts to the codec's sample format and re-chunks to its frame size.
        self.container.mux(self.stream.encode(frame))
        return self._take()

    def finish(self) -> bytes:
        """Flush the encoder and write the trailer; returns the last bytes (the whole file when seekable)."""
        if not self.is_open:
            raise RuntimeError("finish() called twice")
        self.container.mux(self.stream.encode(None))
        self.close()
        return self.sink.getvalue() if isinstance(self.sink, io.BytesIO) else self._take()

    def close(self) -> None:
        """Release FFmpeg's state; an unfinished stream is simply dropped (e.g. the client went away)."""
        if self.is_open:
            self.is_open = False
            self.container.close()


def check_pcm(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise ValueError(f"int16 PCM must have an even number of bytes, got {len(pcm)}")


def make_encoder(fmt: str, sample_rate: int = 24000) -> PcmEncoder | AvEncoder:
    """A streaming encoder: `encode(chunk) -> bytes` as the chunks come, then `finish() -> bytes`."""
    if fmt not in RESPONSE_FORMATS:
        raise ValueError(f"unknown response format {fmt!r}; supported: {', '.join(RESPONSE_FORMATS)}")
    return PcmEncoder(sample_rate) if fmt == "pcm" else AvEncoder(fmt, sample_rate)


def encode_file(fmt: str, pcm: bytes, sample_rate: int = 24000) -> bytes:
    """A complete file with exact headers (sizes, sample count, MP3 gapless info), for non-streamed replies."""
    if fmt == "pcm":
        check_pcm(pcm)
        return bytes(pcm)
    if fmt not in RESPONSE_FORMATS:
        raise ValueError(f"unknown response format {fmt!r}; supported: {', '.join(RESPONSE_FORMATS)}")
    encoder = AvEncoder(fmt, sample_rate, seekable=True)
    try:
        encoder.encode(pcm)
        return encoder.finish()
    finally:
        encoder.close()
