"""Streaming CosyVoice3's HiFT without re-running it over the whole past at every chunk.

Upstream appends each chunk's mel to the request's mel and re-runs the vocoder over all of it (finalize=False: the
last 8 frames held back), emitting the samples past those already sent; the stream equals one call over the whole
mel. The vocoder is causal apart from bounded lookaheads, so a sample depends on (1) the mel of a bounded stretch of
frames before it (about 22 frames through the convs: the stage-1 resblocks alone reach 120 samples at 8 per frame),
(2) the f0 of its own frame, whose phase sums every earlier frame's (carried here in float64, as upstream's float32
cumsum accumulates it), and (3) its absolute position (the noise table). So each chunk runs the vocoder over a
window: MARGIN_FRAMES frames before the first frame it emits, its own frames, and upstream's lookahead; the
window's left edge (zero padding, the STFT's reflection) only touches the margin's samples, which are dropped.
The cost of a chunk is bounded by its own length plus the margin, wherever it falls in the utterance
(test_cosyvoice3.py checks the windowed stream against one whole call; the parity CLI against upstream's chunks).

Streams whose chunks have the same window geometry (Window.key: every middle chunk of a hop policy) run as one
batch (`vocode`): rows differ only in their absolute position, which picks their noise rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from light_tts.models.cosyvoice3.hift.generator import HOLD_BACK_FRAMES, CausalHiFT
from light_tts.models.cosyvoice3.hift.source import SourceState

MARGIN_FRAMES = 32  # frames of left context a window carries (the receptive field is about 22)
F0_REACH = 8  # the f0 predictor's left reach (4 causal k=3 convs)


@dataclass
class HiFTStream:
    """What a request carries between chunks (one row)."""

    source: SourceState  # the phase accumulated through frame source.num_frames
    mel: torch.Tensor | None = None  # [1, 80, n]: the last frames received, from frame `mel_start` on
    mel_start: int = 0
    cycles: torch.Tensor | None = None  # [1, m, H]: accumulated cycles of frames [cycles_start, source.num_frames)
    cycles_start: int = 0
    num_frames: int = 0  # mel frames received
    frames_emitted: int = 0  # frames whose audio left (480 samples each)


@dataclass(frozen=True)
class Window:
    """One chunk's vocoder pass over frames [first, ...) of a stream that has num_frames after the chunk."""

    first: int  # the window's first frame (its margin starts here)
    context: int  # frames before `first` that only feed the f0 predictor
    emit_from: int  # the first frame whose audio leaves now
    end: int  # frames whose audio has left after this chunk
    num_frames: int
    known: int  # frames whose phase is accumulated already
    finalize: bool

    @property
    def key(self) -> tuple:
        """Chunks with equal keys have equal shapes everywhere: they run as one batch."""
        return (
            self.num_frames - self.first,
            self.context,
            self.emit_from - self.first,
            self.known - self.first,
            self.finalize,
        )


def new_stream(hift: CausalHiFT) -> HiFTStream:
    return HiFTStream(source=hift.m_source.new_state(1, hift.conv_post.weight.device))


def plan(stream: HiFTStream, num_new: int, finalize: bool) -> Window | None:
    """The window of the chunk that brings num_new frames; None when no audio can leave yet (fewer than 8 frames
    past what was emitted, not final)."""
    num_frames = stream.num_frames + num_new
    end = num_frames if finalize else num_frames - HOLD_BACK_FRAMES
    if end <= stream.frames_emitted:
        return None
    first = max(0, stream.frames_emitted - MARGIN_FRAMES)
    return Window(
        first, min(first, F0_REACH), stream.frames_emitted, end, num_frames, stream.source.num_frames, finalize
    )


def window_frames(hift: CausalHiFT, num_new: int, first_chunk: bool) -> int:
    """Mel frames that `synthesize_window` gets for a non-final chunk bringing num_new frames: the first chunk's own
    frames less the f0 predictor's lookahead; a later one's (after at least MARGIN_FRAMES + F0_REACH emitted) with
    the margin and the held-back frames before them. What the CUDA graphs are captured for (dit_engine.py)."""
    reach = 0 if first_chunk else MARGIN_FRAMES + HOLD_BACK_FRAMES
    return num_new + reach - hift.f0_predictor.lookahead


def vocode(hift: CausalHiFT, streams: list[HiFTStream], mels: list[torch.Tensor], finalize: bool) -> list[torch.Tensor]:
    """The next mel frames [1, 80, n] of each stream -> the audio [samples] each can emit now (every frame up to 8
    before its end, all of them when finalize). Streams whose windows differ in shape run one by one."""
    windows = [plan(s, m.shape[2], finalize) for s, m in zip(streams, mels)]
    out: list[torch.Tensor | None] = [None] * len(streams)
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(windows):
        if w is None:
            _keep_mel(streams[i], mels[i])
            out[i] = mels[i].new_zeros(0)
        else:
            groups.setdefault(w.key, []).append(i)
    for rows in groups.values():
        for i, audio in zip(
            rows, _vocode_rows(hift, [streams[i] for i in rows], [mels[i] for i in rows], [windows[i] for i in rows])
        ):
            out[i] = audio
    return out


def stream_chunk(hift: CausalHiFT, stream: HiFTStream, mel: torch.Tensor, finalize: bool) -> torch.Tensor:
    """One stream's next chunk: audio [1, samples]."""
    return vocode(hift, [stream], [mel], finalize)[0][None]


def _keep_mel(stream: HiFTStream, mel: torch.Tensor) -> None:
    stream.mel = mel if stream.mel is None else torch.cat([stream.mel, mel], dim=2)
    stream.num_frames += mel.shape[2]


def _vocode_rows(
    hift: CausalHiFT, streams: list[HiFTStream], mels: list[torch.Tensor], windows: list[Window]
) -> list[torch.Tensor]:
    """Rows of one window shape as one batch: f0 over the window (after its context), phases continued from each
    row's accumulator, the source from each row's noise rows, decode; then each row's state moves on."""
    w0 = windows[0]
    totals = [mel if s.mel is None else torch.cat([s.mel, mel], dim=2) for s, mel in zip(streams, mels)]
    window = torch.cat([t[:, :, w.first - w.context - s.mel_start :] for t, s, w in zip(totals, streams, windows)])
    f0 = hift.f0(window, w0.finalize)[:, w0.context :]  # frames [first, first + f0 frames)
    source = SourceState(torch.cat([s.source.accumulated for s in streams]), w0.known)
    new_cycles = hift.m_source.phases(f0[:, w0.known - w0.first :], source)
    old_cycles = [
        s.cycles[:, w.first - s.cycles_start :] if s.cycles is not None else new_cycles[:1, :0]
        for s, w in zip(streams, windows)
    ]
    cycles = torch.cat([torch.cat(old_cycles), new_cycles], dim=1)  # frames [first, first + f0 frames)
    spf, num = hift.samples_per_frame, f0.shape[1]
    noise = torch.stack([hift.noise_rows(w.first * spf, num * spf) for w in windows])
    audio = hift.synthesize_window(window[:, :, w0.context : w0.context + num], f0, cycles, noise, w0.finalize)
    num_new = new_cycles.shape[1]
    for r, (s, w, total) in enumerate(zip(streams, windows, totals)):
        keep = max(0, w.end - MARGIN_FRAMES)  # what the next window needs: its margin and the f0 reach before it
        s.mel, s.mel_start = total[:, :, max(0, keep - F0_REACH) - s.mel_start :], max(0, keep - F0_REACH)
        s.cycles, s.cycles_start = cycles[r : r + 1, keep - w.first :], keep
        s.source = SourceState(source.accumulated[r : r + 1], w.known + num_new)
        s.num_frames, s.frames_emitted = w.num_frames, w.end
    return list(audio[:, (w0.emit_from - w0.first) * spf :])


class CausalVocoder:
    """CosyVoice3's HiFT as token2wav's vocoder (token2wav.HiFTVocoder's methods): nothing is drawn per call, so the
    seed is unused (upstream draws nothing either)."""

    def __init__(self, hift: CausalHiFT):
        self.hift = hift

    def whole(self, mel: torch.Tensor, seed: int) -> torch.Tensor:
        return self.hift.inference(mel, finalize=True)[0]

    def new_stream(self, seed: int, device: torch.device) -> HiFTStream:
        return new_stream(self.hift)

    def chunk(self, stream: HiFTStream, mel: torch.Tensor, finalize: bool) -> torch.Tensor:
        return stream_chunk(self.hift, stream, mel, finalize)
