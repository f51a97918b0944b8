"""The decode engine's side of admission (admission.py decides): each step's page asks from the requests' state,
the preemptions and admissions carried out, waits reported once, and the sizes that can never fit refused at once.

A mixin of DecodeEngine (engine.py), split out to keep each file about one thing: it reads the engine's requests,
pool, slots, limits and step-time model.
"""

from __future__ import annotations

import logging
import math

from light_tts.decode.admission import AdmissionConfig, Ask, Holder, Kind, Plan, Planner
from light_tts.decode.request import DecodeRequest
from light_tts.decode.scheduler import Candidate

logger = logging.getLogger("light_tts.decode.engine")
WAIT_NAMES = {
    "pages": "flow-cache pages",
    "slots": "a stream slot (--decode_max_streams)",
    "capacity": "real-time capacity (the measured step times)",
    "turn": "its turn in a decode step",
}


class EngineAdmission:
    def _check_size(self, req: DecodeRequest, num_tokens: int) -> None:
        """A request whose cache could never fit the pool, even alone, fails now with 413 (a stream by its
        speech-token bound, before it has sent anything; a non-stream utterance by what it holds or must get)."""
        pages = -(-(req.num_prompt_tokens + num_tokens) // self.page_tokens)
        if self.limits.context_window_pages and req.stream:  # prompt + window + the largest chunk and its spill
            window = -(-req.num_prompt_tokens // self.page_tokens) + self.limits.context_window_pages
            pages = min(pages, window + self.hop_policy.max_hop // self.page_tokens + 2)
        if pages > self.pool.num_pages:
            what = "a stream of up to" if req.stream else "an utterance of"
            req.error = (
                f"{what} {num_tokens} speech tokens after a {req.num_prompt_tokens}-token prompt needs "
                f"{pages} flow-cache pages, the pool has {self.pool.num_pages}"
            )
            req.error_kind = "too_large"

    def _kind(self, req: DecodeRequest) -> Kind:
        if req.audio_start is not None:
            return Kind.PLAYING
        return Kind.NEW if req.stream else Kind.WHOLE

    def _plan(self, candidates: list[Candidate], chosen: set[str], ready: dict, urgent: float, now: float) -> Plan:
        """This step's page grants, waits and preemptions (admission.py), from the requests' state."""
        asks = []
        for c in candidates:
            req = self.requests[c.key]
            kind = self._kind(req)
            rank = (req.audio_start or 0.0, req.admission) if kind == Kind.PLAYING else (req.arrival, 0)
            asks.append(
                Ask(
                    c.key,
                    kind,
                    rank,
                    self._pages_asked(req, ready[c.key][1]),
                    req.is_admitted,
                    c.key in chosen,
                    kind == Kind.PLAYING and c.deadline <= urgent,
                    req.prefix_key,
                )
            )
        holders = [
            Holder(
                r.req_id,
                (math.inf if r.audio_start is None else r.audio_start, r.admission),
                r.preempted_at,
                self._spare_s(r, now),
            )
            for r in self.requests.values()
            if r.is_admitted and r.stream
        ]
        room = 1 << 30
        if self.limits.realtime_admission:  # one more stream would make the admitted ones stall
            room = self.capacity_streams() - sum(1 for r in self.requests.values() if r.is_admitted and r.stream)
        lazy = self.limits.reservation == "lazy"
        cfg = AdmissionConfig(
            self.limits.reservation,
            int(self.limits.headroom * self.pool.num_pages) if lazy else 0,
            self.limits.preempt_interval_s,
        )
        return Planner(self.pool, cfg).plan(asks, holders, now, self.slots.num_free, room)

    def _spare_s(self, req: DecodeRequest, now: float) -> float:
        """Audio its listener has buffered past what recomputing its cache would take (> 0: it could give its pages
        back without running dry)."""
        if req.audio_start is None:
            return math.inf
        recompute_s = self.step_model.predict(req.num_prompt_tokens + req.schedule.offset)
        return req.deadline(self.limits.deadline_margin_s) - now - recompute_s

    def _pages_asked(self, req: DecodeRequest, finalize: bool) -> int:
        """Pages its next chunk adds to its budget: lazily its new pages (a request not admitted: those of its
        first chunk, or of the recompute after a preemption); under full reservation its whole budget at once."""
        if req.is_admitted:
            return self._new_pages(req, finalize) if self.limits.reservation == "lazy" else 0
        shared = self.pool.prefix_pages(req.prefix_key) if req.prefix_key else 0
        if self.limits.reservation == "lazy" or not req.stream:
            t0 = shared * self.page_tokens
            tokens, la = self._chunk_tokens(req, finalize, t0)
            return -(-(t0 + len(tokens) - la) // self.page_tokens) - shared
        budget = -(-(req.num_prompt_tokens + req.max_tokens) // self.page_tokens) - shared
        if self.limits.context_window_pages:  # prompt + window + the largest chunk and its spill
            window = -(-req.num_prompt_tokens // self.page_tokens) + self.limits.context_window_pages
            budget = min(budget, window + self.hop_policy.max_hop // self.page_tokens + 2 - shared)
        return budget

    def _free_slots_for(self, num: int) -> None:
        """Voice prefixes no stream uses give their slots back when requests are waiting for one."""
        while self.slots.num_free < num and self.pool.evict_unused():
            pass
        for entry in self.pool.take_evicted():
            self.slots.free(entry.slot)

    def _take_slot(self, req: DecodeRequest) -> None:
        """The request was admitted to the pool: its slot, its speaker vector, and where its cache starts."""
        stream = self.pool.streams[req.req_id]
        req.slot = self.slots.take()
        self.admissions += 1
        req.admission = self.admissions
        self.cache.spks[req.slot] = self.flow._speaker(req.embedding.to(self.dtype))[0]
        if stream.prefix is not None:
            req.t0, req.read_slot = len(stream.prefix.pages) * self.page_tokens, stream.prefix.slot

    def _note_waits(self, plan: Plan, now: float) -> list:
        """A wait that begins is reported once (take_waits); a new stream waiting past --admission_wait_s fails
        as overloaded (429: its listener has heard nothing). Playing streams and non-stream utterances wait for
        pages that their progress frees, and never fail for them."""
        outputs = []
        for key in plan.run:
            self.requests[key].waiting_since = None
        for key, reason in plan.waiting.items():
            req = self.requests[key]
            if req.waiting_since is None:
                req.waiting_since = now
                self.waits.append((key, reason, self._wait_detail(req, reason)))
            if self._kind(req) == Kind.NEW and now - req.waiting_since > self.limits.admission_wait_s:
                outputs.append(
                    self._fail(
                        req,
                        f"no room for another stream within {self.limits.admission_wait_s:g} "
                        f"s (waiting for {WAIT_NAMES[reason]}); retry shortly",
                        "overloaded",
                    )
                )
        return outputs

    def _wait_detail(self, req: DecodeRequest, reason: str) -> str:
        streams = sum(1 for r in self.requests.values() if r.is_admitted and r.stream)
        text = f"{WAIT_NAMES[reason]} ({self._kind(req).name.lower()}; {streams} streams admitted"
        if reason == "pages":
            text += f", {self.pool.num_free} of {self.pool.num_pages} pages free"
        return text + ")"

    def _preempt(self, req: DecodeRequest, now: float) -> None:
        """Its pages went back (admission.py); it keeps its tokens, HiFT state and playback clock, and its next
        chunk recomputes everything from the prompt (or its voice prefix) on, dropping the frames already heard."""
        logger.info("preempting %s (%d chunks computed): an older stream would stall", req.req_id, req.num_chunks)
        self._release(req)
        req.t0, req.read_slot, req.num_chunks, req.waiting_since, req.preempted_at = 0, 0, 0, None, now
        self.stats.preemptions += 1
