"""Who gets flow-cache pages in a decode step, who waits and why, and which stream gives its pages back: the decode
engine's admission policy. Pure CPU (no torch), unit-tested on a real PagePool with a simulated clock.

Three kinds of request ask for pages, served in this order (`Kind`):

1. PLAYING: a stream whose listener has heard audio (a later sentence of it, or a stream that was preempted, too).
   It is never failed for memory. When its chunk's pages are not there it waits, unless waiting is a stall:
   - its listener runs dry unless this step serves it (the scheduler calls it urgent): then younger streams
     with audio to spare (enough buffered to recompute their cache before their own listeners run dry) give
     their pages back, so the stall is not just moved to them;
   - nothing at all would run in this step (every chunk waits for pages): the engine would idle, and nothing it
     runs could free pages meanwhile; then the oldest such stream takes pages from any younger stream. When no
     chunk the scheduler chose can run even so (the recomputes of preempted streams are due first, but they are
     younger than every stream holding pages), the oldest playing stream it left out runs alone instead.
   Preemption: the victims keep their tokens and playback clock, and recompute their cache when they return.
   Age is when the listener started, so pages only ever move from younger streams to older ones: the oldest
   playing stream always progresses, every stream finishes, and no loop can form. A stream is preempted at most
   once per `preempt_interval_s`, and never to no avail (only when the younger streams' pages make room).
2. WHOLE: a non-stream utterance. Its pages are needed for one step (the whole utterance is one pass) and go back
   after it. It waits only behind playing streams, never behind a new stream, and never preempts anyone; so its
   wait is bounded by the playing streams' progress, and the pages it waits for cannot be taken by newcomers.
3. NEW: a stream that has sent nothing yet. It is admitted only with what the kinds before it leave: a playing
   stream waiting to come back, or a non-stream waiting for pages, keeps those pages from it. Under lazy
   reservation it also leaves one page for the next chunk of every admitted stream and `headroom_pages` more: the
   room the playing streams grow into, which admissions may not take. Otherwise it waits; the engine refuses it
   (429) past --admission_wait_s, before its listener heard anything.

A request the scheduler left out of this step does not run, but a waiting one still keeps its pages from the
kinds after it. Full reservation (`reservation="full"`) admits a request with its whole budget and never preempts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from light_tts.decode.page_pool import PagePool

Rank = tuple[float, int]  # (when the listener started, or the arrival; the admission order): smaller is older


class Kind(enum.IntEnum):
    PLAYING = 0
    WHOLE = 1
    NEW = 2


@dataclass
class Ask:
    """A ready request's demand for pages in this step."""

    key: str
    kind: Kind
    rank: Rank
    pages: int  # pages this chunk adds to its budget (not admitted yet: its first chunk's, or its whole budget)
    is_admitted: bool
    is_chosen: bool = True  # in the scheduler's step (a request left out only keeps its pages from later kinds)
    is_urgent: bool = False  # its listener runs dry unless this step serves it
    prefix_key: str | None = None  # the shared voice prefix it uses once admitted


@dataclass
class Holder:
    """An admitted stream: the pages it holds may be taken back by an older stream."""

    key: str
    rank: Rank
    preempted_at: float | None = None
    spare_s: float = 0.0  # audio buffered past what recomputing its cache would take (> 0: it can afford to)


@dataclass(frozen=True)
class AdmissionConfig:
    reservation: str = "lazy"  # "lazy": pages chunk by chunk, with preemption; "full": the whole budget at once
    headroom_pages: int = 0  # lazy: pages new admissions leave free for the growth of admitted streams
    preempt_interval_s: float = 5.0  # a stream is preempted at most once per this many seconds


@dataclass
class Plan:
    run: list[str] = field(default_factory=list)  # chosen requests whose pages are granted, in the order granted
    admitted: list[str] = field(default_factory=list)  # of `run`, those admitted by this step
    preempted: list[str] = field(default_factory=list)  # streams whose pages went back (the engine resets them)
    waiting: dict[str, str] = field(default_factory=dict)  # request -> why: pages, slots, capacity, turn


class Planner:
    def __init__(self, pool: PagePool, cfg: AdmissionConfig):
        self.pool, self.cfg = pool, cfg
        self.num_slots = self.new_room = self.num_admitted = 0
        self.stalled: str | None = None  # the stream whose wait would idle the engine: any younger one makes room

    def plan(self, asks: list[Ask], holders: list[Holder], now: float, free_slots: int, new_stream_room: int) -> Plan:
        """Grants (in the pool) the pages of this step's chosen chunks that may have them, preempts where a
        playing stream would otherwise stall; `free_slots`: slots for admissions, `new_stream_room`: new streams
        the real-time capacity still admits. When nothing at all would run while a playing stream waits for pages,
        the engine would idle until that stream runs dry, and nothing it runs could free pages meanwhile: that
        is a stall too, so the oldest such stream is treated as urgent; failing that, the oldest playing stream the
        scheduler left out (the engine runs it alone)."""
        plan = self._plan(asks, holders, now, free_slots, new_stream_room)
        if plan.run:
            return plan
        # nothing was granted, so the pool is as it was: let the oldest stuck stream that can make room do it
        stuck = [a for a in asks if a.kind == Kind.PLAYING and a.is_chosen and plan.waiting.get(a.key) == "pages"]
        for ask in sorted(stuck, key=lambda a: a.rank):
            self.stalled = ask.key
            retry = self._plan(asks, holders, now, free_slots, new_stream_room)
            self.stalled = None
            if retry.run:
                return retry
        # none of the scheduler's choice can run (say the recomputes of preempted streams, which fill a step and
        # are younger than every stream holding pages): the oldest playing stream it left out runs alone instead
        left_out = [a for a in asks if a.kind == Kind.PLAYING and not a.is_chosen]
        for ask in sorted(left_out, key=lambda a: a.rank):
            self.stalled = ask.key
            retry = self._plan(
                [replace(a, is_chosen=a.key == ask.key) for a in asks], holders, now, free_slots, new_stream_room
            )
            self.stalled = None
            if retry.run:
                return retry
        return plan

    def _plan(self, asks: list[Ask], holders: list[Holder], now: float, free_slots: int, new_stream_room: int) -> Plan:
        plan = Plan()
        self.num_slots, self.new_room, self.num_admitted = free_slots, new_stream_room, len(holders)
        held_back = 0  # pages the waiting requests of earlier kinds need: later kinds may not take them
        ordered = sorted(asks, key=lambda a: (a.kind, a.rank))
        for kind in Kind:
            short = 0
            for ask in (a for a in ordered if a.kind == kind):
                if ask.key in plan.preempted:  # an older stream took its pages in this step
                    plan.waiting[ask.key] = "pages"
                    continue
                reason = (
                    self._grant(ask, held_back, holders, now, plan)
                    if ask.is_chosen
                    else (None if ask.is_admitted else "turn")
                )
                if reason is not None:
                    plan.waiting[ask.key] = reason
                    short += ask.pages
            held_back += short
        return plan

    def _grant(self, ask: Ask, held_back: int, holders: list[Holder], now: float, plan: Plan) -> str | None:
        """None once its pages are granted, else why it waits."""
        if not ask.is_admitted:
            if self.num_slots <= 0:
                return "slots"
            if ask.kind == Kind.NEW and self.new_room <= 0:
                return "capacity"
        extra = 0
        if ask.kind == Kind.NEW and not ask.is_admitted and self.cfg.reservation == "lazy":
            extra = self.cfg.headroom_pages + self.num_admitted  # the growth room of the admitted streams
        if ask.pages + extra > self._room(ask) - held_back:
            is_stall = ask.kind == Kind.PLAYING and (ask.is_urgent or ask.key == self.stalled)
            if not (is_stall and self._preempt_for(ask, held_back, holders, now, plan)):
                return "pages"
        if not ask.is_admitted:
            self.pool.admit(ask.key, 0, ask.prefix_key)
            plan.admitted.append(ask.key)
            self.num_slots -= 1
            self.num_admitted += 1
            self.new_room -= ask.kind == Kind.NEW
        granted = self.pool.grow(ask.key, ask.pages)
        assert granted, "room was checked"
        plan.run.append(ask.key)
        return None

    def _room(self, ask: Ask) -> int:
        return self.pool.num_available(None if ask.is_admitted else ask.prefix_key)

    def _preempt_for(self, ask: Ask, held_back: int, holders: list[Holder], now: float, plan: Plan) -> bool:
        """Take pages back from streams younger than `ask` (with audio to spare, unless the engine would idle),
        youngest first, until its chunk fits; nobody is preempted when even all of them would not make room."""
        if self.cfg.reservation != "lazy":
            return False
        interval, any_victim = self.cfg.preempt_interval_s, ask.key == self.stalled
        victims = sorted(
            (
                h
                for h in holders
                if h.rank > ask.rank
                and h.key in self.pool.streams
                and h.key not in plan.run
                and (h.preempted_at is None or now - h.preempted_at >= interval)
                and (any_victim or h.spare_s > 0)
            ),
            key=lambda h: h.rank,
            reverse=True,
        )
        short = ask.pages - (self._room(ask) - held_back)
        if sum(self.pool.streams[h.key].num_held for h in victims) < short:
            return False
        for victim in victims:
            self.pool.release(victim.key)
            plan.preempted.append(victim.key)
            self.num_slots += 1
            self.num_admitted -= 1
            if ask.pages <= self._room(ask) - held_back:
                return True
        return ask.pages <= self._room(ask) - held_back
