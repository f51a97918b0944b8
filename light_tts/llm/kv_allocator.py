"""Token-granular KV slot allocator and the pool of req_to_token rows: pure CPU bookkeeping, no torch.

A slot is one token's keys and values in every layer (k_cache[layer, slot]); the runner owns the tensors and the
req_to_token table [num_rows, max_total_len] that maps a row and position to a slot. Row 0 is a sentinel that
no request gets: CUDA-graph padding points at it with seq_len 0.
"""

from __future__ import annotations


class KVAllocator:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free: list[int] = list(range(num_slots - 1, -1, -1))  # a stack: low slots are handed out first
        self._is_free = bytearray(b"\x01") * num_slots  # catches double frees, which would corrupt two requests

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"asked for {n} KV slots, {len(self._free)} free")
        slots = self._free[len(self._free) - n :][::-1]
        del self._free[len(self._free) - n :]
        for s in slots:
            self._is_free[s] = 0
        return slots

    def free(self, slots: list[int]) -> None:
        for s in slots:
            if self._is_free[s]:
                raise RuntimeError(f"KV slot {s} freed twice")
            self._is_free[s] = 1
        self._free.extend(reversed(slots))


class RowAllocator:
    """Rows 1..num_rows-1 of req_to_token; row 0 is the padding sentinel."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self._free = list(range(num_rows - 1, 0, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise MemoryError("no free req_to_token row")
        return self._free.pop()

    def free(self, row: int) -> None:
        self._free.append(row)
