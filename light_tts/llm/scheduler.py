"""Continuous-batching scheduler of the LLM engine: picks each step's prefill or decode batch under the KV budget,
preempts when memory runs out, and turns decoded ids into TokenOutputs. Pure CPU, no torch.

Policy: a step is either a prefill batch (new requests, recomputed preempted ones, bistream text blocks) of at
most batch_max_tokens new tokens, or a decode batch (one token per running request). Prefill goes first when
nothing can decode, or once decoding has run router_max_wait_tokens steps since the last prefill (so arrivals are
batched a little without starving). Admission is FIFO and needs KV for the new tokens plus one slot per running
request (the next decode). A decode that finds no free slot preempts the newest request (its KV is freed, it
waits at the front of the queue and is recomputed later); so does a prefill that does not fit while nothing can
decode (bistream requests waiting for text hold KV). A request alone that still does not fit ends with an error
instead of waiting forever.

First audio first: when some running requests have not yet produced their first hop (`first_hop_tokens`), a
decode step leaves out the requests that are ahead of their listeners by more than `ahead_tokens` (speech tokens
beyond 25 per second since their first token): a new stream's first chunk then waits for a small batch, not for
streams that already buffered seconds. Off when ahead_tokens is 0.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from light_tts.llm.kv_allocator import KVAllocator, RowAllocator
from light_tts.llm.prefix_cache import PrefixCache
from light_tts.llm.request import SeqStatus, Sequence, TokenOutput


@dataclass(frozen=True)
class SchedulerConfig:
    num_kv_slots: int
    max_req_total_len: int  # inputs of one request, prompt and generated (the req_to_token row width)
    batch_max_tokens: int
    running_max_req_size: int
    router_max_wait_tokens: int
    enable_prefix_cache: bool
    first_hop_tokens: int = 28  # speech tokens before a stream's first audio (a hop, its pad and lookahead)
    ahead_tokens: int = 0  # 0: every ready request decodes every step
    tokens_per_second: float = 25


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    is_prefill: bool


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.clock = cfg, clock
        self.allocator = KVAllocator(cfg.num_kv_slots)
        self.rows = RowAllocator(cfg.running_max_req_size + 1)
        self.prefix_cache = PrefixCache(self.allocator) if cfg.enable_prefix_cache else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.seqs: dict[str, Sequence] = {}
        self.outputs: list[TokenOutput] = []  # finished outside a batch (rejected at admission), sent next step
        self.num_decodes_since_prefill = 0
        self.num_preemptions = 0
        self.waits: list[tuple[str, str]] = []  # (request, why) of each wait that began: kv, batch
        self.is_waiting: set[str] = set()  # requests whose wait was reported and has not ended

    def add(self, seq: Sequence) -> None:
        if seq.req_id in self.seqs:
            raise ValueError(f"request id {seq.req_id} is already in the engine")
        limit = min(self.cfg.max_req_total_len, self.cfg.num_kv_slots - 1)
        if seq.num_tokens > limit:
            self.reject(seq, f"error:prompt of {seq.num_tokens} tokens exceeds the engine limit of {limit}")
            return
        self.seqs[seq.req_id] = seq
        self.waiting.append(seq)

    def append_text(self, req_id: str, text_token_ids: list[int], is_last: bool) -> bool:
        """False when the request is no longer here (finished or aborted): late text is dropped."""
        seq = self.seqs.get(req_id)
        if seq is None:
            return False
        if seq.feeder is None:
            raise ValueError(f"request {req_id} is not bistream")
        seq.feeder.add_text(text_token_ids, is_last)
        self._check_length(seq)
        if seq.is_finished:
            self._remove(seq)
            self.outputs.append(TokenOutput(seq.req_id, [], True, seq.finish_reason))
        return True

    def abort(self, req_id: str) -> bool:
        seq = self.seqs.get(req_id)
        if seq is None:
            return False
        seq.finish("abort")
        self._remove(seq)
        return True

    def fail(self, req_id: str, reason: str) -> bool:
        """End a request with an error that the next step reports; False if it is not here."""
        seq = self.seqs.get(req_id)
        if seq is None:
            return False
        self._remove(seq)
        self.reject(seq, reason)
        return True

    def has_unfinished(self) -> bool:
        return bool(self.seqs) or bool(self.outputs)

    def take_waits(self) -> list[tuple[str, str]]:
        """(request, why) of each wait for KV or a batch row that began since the last call (reported once)."""
        waits, self.waits = self.waits, []
        return waits

    def take_outputs(self) -> list[TokenOutput]:
        outputs, self.outputs = self.outputs, []
        return outputs

    def schedule(self) -> ScheduledBatch | None:
        """The next batch, or None when no request can run now (all wait for text, or there are none)."""
        decodable = [s for s in self.running if s.is_ready and s.num_new_tokens == 1]
        wants_prefill = any(s.is_ready for s in self.waiting) or any(
            s.is_ready and s.num_new_tokens > 1 for s in self.running
        )
        if wants_prefill and (not decodable or self.num_decodes_since_prefill >= self.cfg.router_max_wait_tokens):
            seqs = self._schedule_prefill()
            # nothing can decode, so nothing would free KV: make room (requests waiting for text hold some)
            while not seqs and not decodable and self._preempt_for_prefill():
                seqs = self._schedule_prefill()
            if seqs:
                self.num_decodes_since_prefill = 0
                return ScheduledBatch(seqs, is_prefill=True)
        if decodable:
            seqs = self._schedule_decode(self._first_hops_first(decodable))
            if seqs:
                self.num_decodes_since_prefill += 1
                return ScheduledBatch(seqs, is_prefill=False)
        return None

    def postprocess(self, batch: ScheduledBatch, token_ids: list[int]) -> list[TokenOutput]:
        """Take the id decoded for each sequence of the batch (forced fills replace samples)."""
        outputs = self.take_outputs()
        for seq, token in zip(batch.seqs, token_ids):
            seq.num_computed = seq.num_tokens
            self._share_prefix(seq)
            forced = seq.forced_token()
            new_tokens = seq.append_decoded(token if forced is None else forced)
            if new_tokens and seq.first_output_at is None:
                seq.first_output_at = self.clock()
            self._check_length(seq)
            if seq.is_finished:
                self._remove(seq)
            if new_tokens or seq.is_finished:
                outputs.append(TokenOutput(seq.req_id, new_tokens, seq.is_finished, seq.finish_reason))
        return outputs

    def _schedule_prefill(self) -> list[Sequence]:
        scheduled: list[Sequence] = []
        num_batch_tokens = 0
        candidates = [s for s in self.running if s.is_ready and s.num_new_tokens > 1]
        candidates += [s for s in self.waiting if s.is_ready]
        for i, seq in enumerate(candidates):
            is_new = seq.status == SeqStatus.WAITING
            if is_new and len(self.running) >= self.cfg.running_max_req_size:
                self._note_waits(candidates[i:], "batch")
                break
            if is_new:
                self._reuse_prefix(seq)
            num_new = seq.num_new_tokens
            # a prompt longer than batch_max_tokens still runs, alone, so that it cannot block the queue
            is_too_big = bool(scheduled) and num_batch_tokens + num_new > self.cfg.batch_max_tokens
            headroom = len(self.running) if is_new else 0
            if is_too_big or not self._ensure_free(num_new + headroom):
                if is_new:
                    self._release_kv(seq)
                if not is_too_big:  # too big for this batch: it goes in the next one
                    self._note_waits(candidates[i:], "kv")
                break
            self.is_waiting.discard(seq.req_id)
            seq.slots += self.allocator.allocate(num_new)
            if is_new:
                seq.row = self.rows.allocate()
                seq.status = SeqStatus.RUNNING
                self.waiting.remove(seq)
                self.running.append(seq)
            scheduled.append(seq)
            num_batch_tokens += num_new
        return scheduled

    def _note_waits(self, seqs: list[Sequence], reason: str) -> None:
        for seq in seqs:
            if seq.req_id not in self.is_waiting:
                self.is_waiting.add(seq.req_id)
                self.waits.append((seq.req_id, reason))

    def _first_hops_first(self, decodable: list[Sequence]) -> list[Sequence]:
        """While a request still makes its first hop, leave out those far ahead of their listeners."""
        cfg = self.cfg
        if not cfg.ahead_tokens or all(s.num_output >= cfg.first_hop_tokens for s in decodable):
            return decodable
        now = self.clock()

        def is_ahead(s: Sequence) -> bool:
            if s.first_output_at is None or s.num_output < cfg.first_hop_tokens:
                return False
            heard = (now - s.first_output_at) * cfg.tokens_per_second
            return bool(s.num_output - cfg.first_hop_tokens > heard + cfg.ahead_tokens)

        return [s for s in decodable if not is_ahead(s)]

    def _schedule_decode(self, decodable: list[Sequence]) -> list[Sequence]:
        if self._ensure_free(len(decodable)):  # the common case: one slot each, no preemption
            for seq, slot in zip(decodable, self.allocator.allocate(len(decodable))):
                seq.slots.append(slot)
            return decodable
        scheduled: list[Sequence] = []
        queue = deque(decodable)
        while queue:
            seq = queue.popleft()
            while not self._ensure_free(1):
                victims = [s for s in self.running if s is not seq and s not in scheduled]
                if victims:
                    victim = max(victims, key=lambda s: s.arrival)
                    self._preempt(victim)
                    if victim in queue:
                        queue.remove(victim)
                elif scheduled:
                    self._preempt(seq)
                    break
                else:
                    seq.finish(f"error:KV cache of {self.cfg.num_kv_slots} tokens cannot hold this request")
                    self._remove(seq)
                    self.outputs.append(TokenOutput(seq.req_id, [], True, seq.finish_reason))
                    break
            else:
                seq.slots += self.allocator.allocate(1)
                scheduled.append(seq)
        return scheduled

    def _preempt_for_prefill(self) -> bool:
        """Preempt the newest running request other than the first prefill candidate; with none left, that
        candidate can never fit and ends with an error. True if something was preempted."""
        first = next((s for s in self.running if s.is_ready and s.num_new_tokens > 1), None) or next(
            (s for s in self.waiting if s.is_ready), None
        )
        victims = [s for s in self.running if s is not first]
        if victims:
            self._preempt(max(victims, key=lambda s: s.arrival))
            return True
        if first is not None:
            self.fail(first.req_id, f"error:KV cache of {self.cfg.num_kv_slots} tokens cannot hold this request")
        return False

    def _ensure_free(self, num_slots: int) -> bool:
        short = num_slots - self.allocator.num_free
        if short > 0 and self.prefix_cache is not None:
            self.prefix_cache.evict(short)
        return self.allocator.can_allocate(num_slots)

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Start a new sequence on a cached copy of its voice prefix (it must still compute at least one token)."""
        if self.prefix_cache is None or seq.prefix_key is None or seq.num_tokens <= seq.prefix_len:
            return
        slots = self.prefix_cache.acquire(seq.prefix_key, seq.prefix_len)
        if slots is not None:
            seq.slots = list(slots)
            seq.num_computed = seq.num_shared = seq.prefix_len

    def _share_prefix(self, seq: Sequence) -> None:
        """After its first prefill, give a sequence's voice prefix to the cache (unless someone already did)."""
        if self.prefix_cache is None or seq.prefix_key is None or seq.num_shared:
            return
        if seq.num_computed >= seq.prefix_len and self.prefix_cache.insert(seq.prefix_key, seq.slots[: seq.prefix_len]):
            seq.num_shared = seq.prefix_len

    def _check_length(self, seq: Sequence) -> None:
        if not seq.is_finished and seq.num_tokens > self.cfg.max_req_total_len:
            seq.finish("length")

    def _release_kv(self, seq: Sequence) -> None:
        self.allocator.free(seq.slots[seq.num_shared :])
        if seq.num_shared:  # shared slots come only from the prefix cache, under the request's prefix key
            assert self.prefix_cache is not None and seq.prefix_key is not None
            self.prefix_cache.release(seq.prefix_key)
        if seq.row >= 0:
            self.rows.free(seq.row)
        seq.slots, seq.row, seq.num_shared, seq.num_computed = [], -1, 0, 0

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self._release_kv(seq)
        seq.status = SeqStatus.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def _remove(self, seq: Sequence) -> None:
        self.is_waiting.discard(seq.req_id)
        self._release_kv(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.seqs.pop(seq.req_id, None)

    def reject(self, seq: Sequence, reason: str) -> None:
        """Finish a request that never ran; its output goes out with the next step."""
        seq.finish(reason)
        self.outputs.append(TokenOutput(seq.req_id, [], True, reason))
