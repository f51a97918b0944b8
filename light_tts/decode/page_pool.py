"""Which page of the decode process's flow-cache pool belongs to whom: streams, shared voice prefixes, reservations.

Pure CPU bookkeeping (no torch), the decode engine's BlockManager. A page holds one chunk (25 tokens, 50 mel frames)
of a stream's flow cache; the tensors live in flow_cache.FlowCache, indexed by the page ids handed out here.

Admission by reservation: a stream is admitted with a budget (the most pages it can ever hold at once: prompt plus
its maximum speech tokens), and is admitted only if the pool can honour every budget at once. Pages are then taken
lazily, one chunk at a time, from the stream's own budget. The invariant

    num_free + num_evictable >= num_outstanding      (outstanding = sum over streams of budget - held)

holds after every call, so a running stream can always get the page its next chunk needs: no stream is ever
starved and the GPU memory behind the pool can never run out.

Shared voice prefixes: the first pages of a prompt's flow cache are the same for every stream of that voice (see
docs/decode-engine.md for which pages qualify). The first stream of a voice hands those pages to a prefix entry;
later streams of the voice use the entry's pages read-only. An entry in use is pinned; an unused one stays in an LRU
and counts as evictable: its pages are reclaimed (least recently used first) only when a stream needs them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


class PoolExhaustedError(RuntimeError):
    """A page was asked for beyond what the stream was admitted with (a bug in the caller), or a request needs more
    pages than the whole pool has."""


@dataclass
class PrefixEntry:
    key: str
    pages: list[int]
    num_users: int = 0
    slot: int | None = None  # the tail slot holding the conv context at the prefix boundary (engine-owned)


@dataclass
class StreamPages:
    budget: int  # the most own pages this stream may hold at once
    prefix: PrefixEntry | None = None
    own: list[int] = field(default_factory=list)  # own pages in order (-1: dropped, outside the context window)

    @property
    def num_held(self) -> int:
        return sum(1 for p in self.own if p >= 0)

    @property
    def page_table(self) -> list[int]:
        """Every page of the stream's cache in order: the shared prefix first, then its own."""
        return (self.prefix.pages if self.prefix else []) + self.own


class PagePool:
    def __init__(self, num_pages: int):
        if num_pages < 1:
            raise ValueError("the flow-cache pool needs at least one page")
        self.num_pages = num_pages
        self.free: list[int] = list(range(num_pages - 1, -1, -1))  # a stack: low page ids are handed out first
        self.streams: dict[str, StreamPages] = {}
        self.prefixes: dict[str, PrefixEntry] = {}
        self.unused_prefixes: OrderedDict[str, PrefixEntry] = OrderedDict()  # LRU: least recently used first
        self.num_outstanding = 0  # sum of budget - held over streams
        self.evicted: list[PrefixEntry] = []  # entries reclaimed since the engine last looked (it frees their slots)

    # ---- counts ----

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_evictable(self) -> int:
        return sum(len(e.pages) for e in self.unused_prefixes.values())

    @property
    def num_used(self) -> int:
        return self.num_pages - self.num_free

    def num_available(self, prefix_key: str | None = None) -> int:
        """Pages a new stream could be granted now (using the prefix `prefix_key` pins it: its pages stop being
        evictable)."""
        pinned = 0
        entry = self.prefixes.get(prefix_key) if prefix_key is not None else None
        if entry is not None and entry.num_users == 0:
            pinned = len(entry.pages)
        return self.num_free + self.num_evictable - pinned - self.num_outstanding

    def prefix_pages(self, prefix_key: str | None) -> int:
        entry = self.prefixes.get(prefix_key) if prefix_key is not None else None
        return len(entry.pages) if entry else 0

    # ---- streams ----

    def can_admit(self, budget: int, prefix_key: str | None = None) -> bool:
        return budget <= self.num_available(prefix_key)

    def admit(self, stream_id: str, budget: int, prefix_key: str | None = None) -> StreamPages:
        """Admit a stream that may hold up to `budget` own pages at once, sharing the prefix `prefix_key` if one is
        kept (the caller sizes `budget` without the prefix's pages then: see prefix_pages)."""
        if stream_id in self.streams:
            raise ValueError(f"stream {stream_id!r} is already admitted")
        if budget > self.num_pages:
            raise PoolExhaustedError(f"a stream of {budget} pages cannot fit a pool of {self.num_pages}")
        if not self.can_admit(budget, prefix_key):
            raise PoolExhaustedError(f"{budget} pages asked, {self.num_available(prefix_key)} available")
        entry = self.prefixes.get(prefix_key) if prefix_key is not None else None
        if entry is not None:
            self._use(entry)
        stream = StreamPages(budget, entry)
        self.streams[stream_id] = stream
        self.num_outstanding += budget
        return stream

    def allocate(self, stream_id: str, num: int) -> list[int]:
        """Append `num` new pages to the stream's cache, within its budget; returns their ids."""
        stream = self.streams[stream_id]
        if stream.num_held + num > stream.budget:
            raise PoolExhaustedError(
                f"stream {stream_id!r} holds {stream.num_held} of {stream.budget} pages and asked for {num} more"
            )
        while len(self.free) < num:
            self._evict_one()  # the invariant guarantees an unused prefix is there to reclaim
        pages = [self.free.pop() for _ in range(num)]
        stream.own.extend(pages)
        self.num_outstanding -= num
        return pages

    def grow(self, stream_id: str, num: int) -> bool:
        """Lazy reservation: add `num` pages to the stream's budget if the pool can honour them (False if not)."""
        if num > self.num_available():
            return False
        self.streams[stream_id].budget += num
        self.num_outstanding += num
        return True

    def drop(self, stream_id: str, own_index: int) -> None:
        """Give back one own page early (it left the stream's context window); its budget stays with the stream."""
        stream = self.streams[stream_id]
        page = stream.own[own_index]
        if page >= 0:
            stream.own[own_index] = -1
            self.free.append(page)
            self.num_outstanding += 1

    def release(self, stream_id: str) -> None:
        """The stream finished, failed or was aborted: its own pages and unused budget go back to the pool."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.num_outstanding -= stream.budget - stream.num_held
        self.free.extend(p for p in reversed(stream.own) if p >= 0)
        if stream.prefix is not None:
            self._unuse(stream.prefix)

    # ---- shared prefixes ----

    def register_prefix(self, stream_id: str, key: str, num_pages: int, slot: int | None = None) -> PrefixEntry | None:
        """The stream's first `num_pages` own pages become the kept prefix `key`, which the stream then uses; its
        budget shrinks accordingly. None (nothing changes) if the key is kept already or the stream shares one."""
        stream = self.streams[stream_id]
        if key in self.prefixes or stream.prefix is not None or num_pages < 1 or len(stream.own) < num_pages:
            return None
        if any(p < 0 for p in stream.own[:num_pages]):
            return None
        entry = PrefixEntry(key, stream.own[:num_pages], slot=slot)
        self.prefixes[key] = entry
        del stream.own[:num_pages]
        stream.budget -= num_pages
        stream.prefix = entry
        entry.num_users = 1
        return entry

    def _use(self, entry: PrefixEntry) -> None:
        if entry.num_users == 0:
            del self.unused_prefixes[entry.key]
        entry.num_users += 1

    def _unuse(self, entry: PrefixEntry) -> None:
        entry.num_users -= 1
        if entry.num_users == 0:
            self.unused_prefixes[entry.key] = entry  # most recently used last

    def _evict_one(self) -> PrefixEntry:
        if not self.unused_prefixes:
            raise PoolExhaustedError("no free page and no unused prefix to reclaim")  # broken invariant
        key, entry = self.unused_prefixes.popitem(last=False)
        del self.prefixes[key]
        self.free.extend(reversed(entry.pages))
        self.evicted.append(entry)
        return entry

    def evict_unused(self) -> bool:
        """Reclaim the least recently used prefix no stream uses (its slot is wanted); False if there is none."""
        if not self.unused_prefixes:
            return False
        self._evict_one()
        return True

    def take_evicted(self) -> list[PrefixEntry]:
        out, self.evicted = self.evicted, []
        return out

    def check(self) -> None:
        """The invariants, for tests: every page has exactly one holder, and every budget can be honoured."""
        held = list(self.free)
        for stream in self.streams.values():
            held += [p for p in stream.own if p >= 0]
            assert stream.num_held <= stream.budget
        for entry in self.prefixes.values():
            held += entry.pages
        assert sorted(held) == list(range(self.num_pages)), "a page is lost or held twice"
        assert self.num_outstanding == sum(s.budget - s.num_held for s in self.streams.values())
        assert self.num_free + self.num_evictable >= self.num_outstanding
        assert set(self.unused_prefixes) == {k for k, e in self.prefixes.items() if e.num_users == 0}
