"""Orpheus's token ids -> SNAC frames -> the windows a stream decodes (pure CPU, no torch).

Frames. An audio frame is 7 consecutive audio tokens; position p of a frame holds the code c (0..4095) as the id
first_audio + 4096 p + c. An id is taken when it is the audio id of the position the stream expects next
(accepted tokens modulo 7); anything else (a text or control id, an audio id of another position) is dropped and
the position does not advance. Code 0 is an ordinary code (the reference's `code > 0` test dropped it and fell
out of step for a frame) and code 4096 cannot occur (the reference's `<= 4096` let it through to SNAC).
SNAC's codebooks of F frames: c0 of each frame -> codebook 0 [F]; c1, c4 -> codebook 1 [2F]; c2, c3, c5, c6 ->
codebook 2 [4F] (in that time order).

Windows. SNAC is not causal (a code reaches ~2.3 frames to each side), so a stream is decoded as the reference
streams it: once frame k (k >= 4) has arrived, frames k-4 .. k-1 are decoded and the window's second frame is
emitted (2048 samples, 1 frame of left and 2 of right context). Unlike the reference, nothing is lost: the first
window also emits frame 0 (first audio: 2 frames after 28 tokens), and when the stream ends the last window's
frames 2 and 3 follow (kept from its decode, no second pass); a stream of fewer than 4 frames is decoded whole at
its end. N frames give N x 2048 samples (the reference: (N - 3) x 2048, none below 4 frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW = 4  # frames per decode window
EMIT = 1  # the window's frame a steady-state window emits


@dataclass(frozen=True)
class FrameIds:
    first_audio: int
    codebook_size: int = 4096
    frame_len: int = 7


class FrameParser:
    """Ids of one stream -> complete frames (7 codes each)."""

    def __init__(self, ids: FrameIds):
        self.ids = ids
        self.partial: list[int] = []
        self.num_dropped = 0

    def feed(self, token_ids: list[int]) -> list[tuple[int, ...]]:
        frames = []
        size = self.ids.codebook_size
        for t in token_ids:
            code = t - self.ids.first_audio - size * len(self.partial)
            if not 0 <= code < size:
                self.num_dropped += 1
                continue
            self.partial.append(code)
            if len(self.partial) == self.ids.frame_len:
                frames.append(tuple(self.partial))
                self.partial = []
        return frames


def frames_to_codes(frames: list[tuple[int, ...]] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[F, 7] codes -> SNAC's three codebooks [F], [2F], [4F] (int64)."""
    f = np.asarray(frames, dtype=np.int64).reshape(-1, 7)
    return f[:, 0], f[:, [1, 4]].reshape(-1), f[:, [2, 3, 5, 6]].reshape(-1)


@dataclass(frozen=True)
class Window:
    """A decode of frames [start, end) emitting its frames [emit_from, emit_to) now, and keeping frames
    [emit_to, keep_to) as the stream's tail (emitted if the stream ends with this window)."""

    start: int
    end: int
    emit_from: int
    emit_to: int
    keep_to: int

    @property
    def num_frames(self) -> int:
        return self.end - self.start


class WindowSchedule:
    """Which window a stream decodes next, given the frames it has and whether more will come."""

    def __init__(self):
        self.num_frames = 0
        self.is_last = False
        self.next_end = WINDOW  # the end frame of the next steady-state window
        self.num_emitted = 0  # frames emitted (or handed out in windows) so far
        self.is_done = False

    def add_frames(self, count: int, is_last: bool = False) -> None:
        self.num_frames += count
        self.is_last = self.is_last or is_last

    def num_ready(self) -> int:
        """Windows next_window would hand out now, one after another (a short or empty stream's whole: 1)."""
        if self.is_done:
            return 0
        if self.next_end <= self.num_frames:
            return self.num_frames - self.next_end + 1
        return 1 if self.is_last and self.num_frames < WINDOW else 0

    def next_window(self) -> Window | None:
        """The next window to decode, or None (not enough frames yet, or done). A window is handed out once."""
        if self.is_done:
            return None
        n = self.num_frames
        if self.next_end <= n:
            end = self.next_end
            start = end - WINDOW
            is_final = self.is_last and end == n
            window = Window(start, end, 0 if start == 0 else start + EMIT, end if is_final else start + EMIT + 1, end)
            self.next_end += 1
            self.num_emitted = window.emit_to
            self.is_done = is_final
            return window
        if self.is_last and n < WINDOW:  # a short stream: all of it at once (nothing, for no frames)
            self.is_done = True
            self.num_emitted = n
            return Window(0, n, 0, n, n) if n else None
        return None

    def tail_frames(self) -> tuple[int, int] | None:
        """At the end of a stream whose last window was decoded before the end was known: the frames [a, b) of
        that window still to emit (from its kept tail)."""
        if self.is_done or not self.is_last or self.num_frames < WINDOW or self.next_end <= self.num_frames:
            return None
        self.is_done = True
        start = self.num_emitted
        self.num_emitted = self.num_frames
        return start, self.num_frames
