"""Voice-prefix KV reuse: requests that start with the same prompt inputs share the KV slots of that prefix.

An entry owns the slots of one computed prefix (keyed by its input ids). Requests using it hold a
reference; entries nobody references stay cached and are evicted least-recently-used first when the allocator
runs short. Pure CPU, no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from light_tts.llm.kv_allocator import KVAllocator


@dataclass
class PrefixEntry:
    slots: list[int]
    ref_count: int = 0


class PrefixCache:
    def __init__(self, allocator: KVAllocator):
        self.allocator = allocator
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()  # least recently used first

    @property
    def num_cached_slots(self) -> int:
        return sum(len(e.slots) for e in self._entries.values())

    @property
    def num_evictable_slots(self) -> int:
        return sum(len(e.slots) for e in self._entries.values() if e.ref_count == 0)

    def acquire(self, key: tuple[int, ...], length: int) -> list[int] | None:
        """The prefix's slots with a reference taken, or None on a miss."""
        entry = self._entries.get(key)
        if entry is None or len(entry.slots) != length:
            return None
        entry.ref_count += 1
        self._entries.move_to_end(key)
        return entry.slots

    def insert(self, key: tuple[int, ...], slots: list[int]) -> bool:
        """Hand the slots of a just-computed prefix to the cache (one reference, the caller's); False if present."""
        if key in self._entries:
            return False
        self._entries[key] = PrefixEntry(list(slots), ref_count=1)
        return True

    def release(self, key: tuple[int, ...]) -> None:
        self._entries[key].ref_count -= 1

    def evict(self, num_slots: int) -> int:
        """Free unreferenced entries, oldest first, until num_slots are freed or none is left; returns slots freed."""
        freed = 0
        for key in [k for k, e in self._entries.items() if e.ref_count == 0]:
            if freed >= num_slots:
                break
            entry = self._entries.pop(key)
            self.allocator.free(entry.slots)
            freed += len(entry.slots)
        return freed
