"""The audio path from a decode process to an HTTP worker: one int16 ring per request slot, in shared memory.

Both sides use this one class: the decode process that owns a request writes (`try_write`), the HTTP worker that
owns the slot reads (`read`). AudioReady messages say where each chunk is.
"""

from __future__ import annotations

import numpy as np


class AudioRing:
    """Per-slot audio rings over two shared arrays: `samples` [slots, capacity] int16 and `read` [slots] int64.

    Positions are absolute sample counts since the request started (they never wrap); sample p lives at ring
    index p % capacity. Invariants:
    - `read[slot]` is how many samples the reader has copied out. Only the reader advances it; `reset` (at slot
      claim, before any writer knows the slot) sets it to 0.
    - The writer keeps its own count `written` and writes [written, written + n) only if
      written + n - read[slot] <= capacity, so unread audio is never overwritten.
    - A chunk that does not fit is sent inline in its AudioReady instead and does not advance `written`.
    - The reader copies exactly the (offset, n) each AudioReady announced, in order, then sets read = offset + n.
    One writer and one reader per slot, each the only one to move its own counter: no lock is needed.
    """

    def __init__(self, samples: np.ndarray, read: np.ndarray):
        self.samples, self.read_pos = samples, read
        self.capacity = samples.shape[1]

    def reset(self, slot: int) -> None:
        self.read_pos[slot] = 0

    def try_write(self, slot: int, written: int, pcm: np.ndarray) -> bool:
        """Write `pcm` at position `written` if the unread audio leaves room; False (nothing written) if not."""
        n = len(pcm)
        if written + n - int(self.read_pos[slot]) > self.capacity:
            return False
        ring, head = self.samples[slot], written % self.capacity
        first = min(n, self.capacity - head)
        ring[head : head + first] = pcm[:first]
        ring[: n - first] = pcm[first:]
        return True

    def read(self, slot: int, offset: int, n: int) -> bytes:
        """Copy the chunk at [offset, offset + n) out of the ring and let the writer reuse its space."""
        ring, head = self.samples[slot], offset % self.capacity
        first = min(n, self.capacity - head)
        data: bytes = ring[head : head + first].tobytes() + ring[: n - first].tobytes()
        self.read_pos[slot] = offset + n
        return data
