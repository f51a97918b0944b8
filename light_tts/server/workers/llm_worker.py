"""LLM process: speech-token LM with continuous batching; streams each step's tokens to the decode processes.

A request's sentences run through the engine one after another (sentence k+1 starts when k finishes, so its
audio follows k's), each as its own engine request seeded with sentence_seed(seed, k) as the offline pipeline
does. A bistream request is one engine request fed text pieces as they arrive.
Each request is assigned to a decode process at arrival, among those of this model's decode group (the topology):
the one with room and the most playback slack, round-robin among equals. It serves one model (a model may have
several LLM replicas, placement.py). The LLM's prompt is what the encode process wrote for the request's mode
(read_llm_prompt); a voice conversion (VCRequestIn) has no LLM step: its source tokens go on to a decode process
as one finished sentence.
"""

from __future__ import annotations

import os
import traceback
from collections import deque
from dataclasses import dataclass, field

import zmq

from light_tts.errors import RequestError, UnavailableError
from light_tts.request_rules import sentence_seed
from light_tts.server.ipc.channels import Handlers, HttpReplies, Inbox, Outbox
from light_tts.server.ipc.io_struct import (
    AbortRequest,
    DecodeStart,
    LLMRequestIn,
    RequestParams,
    SpeechTokenBatch,
    TextTokens,
    VCRequestIn,
)
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.ipc.shm import RequestSlots
from light_tts.server.ipc.stage_trace import completes_first_chunk, now
from light_tts.server.metrics import prometheus as metrics
from light_tts.server.runtime.process import model_on, parent_is_gone, resolve_device, set_process_title, setup_process
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs
from light_tts.server.workers.idle_engine import IdleEngine
from light_tts.server.workers.worker_common import REPORT_EVERY_S, AbortedRequests, Every, serve, step_error


@dataclass
class LLMRequestState:
    """CPU state of one server request inside the LLM process."""

    params: RequestParams
    is_bistream: bool
    decode_rank: int
    prompt_text_tokens: list[int]
    prompt_speech_tokens: list[int]
    pending: deque = field(default_factory=deque)  # sentences (token lists) not yet given to the engine
    is_text_done: bool = False
    sentence_idx: int = -1  # sentence now in the engine; -1 before the first
    is_running: bool = False
    is_last_sent: bool = False  # bistream: the engine was told the text ended
    num_text_tokens: int = 0  # of every sentence or piece received so far
    num_counted_prompt_tokens: int = 0  # prompt text counted in each sentence's length bounds (prompt_counts_in_length)
    max_tokens: int = 0  # the running sentence's speech-token bound
    first_chunk_tokens: int = 0  # speech tokens of the first audio chunk (its trace's first_hop_out)
    num_first_tokens: int = 0  # speech tokens of the first sentence sent so far

    def engine_id(self) -> str:
        """The engine's request id of the running sentence (the engine wants a unique string; the worker maps it
        back through LLMWorker.running, never by parsing it)."""
        return f"{self.params.req_id}.{self.sentence_idx}"

    def sentence_seed(self) -> int:
        return self.params.seed if self.is_bistream else sentence_seed(self.params.seed, self.sentence_idx)


class LLMWorker:
    def __init__(self, settings: ServerSettings, ports: PortArgs, rank: int, launcher_pid: int):
        self.settings, self.cfg, self.ports, self.launcher_pid = settings, settings.cfg, ports, launcher_pid
        self.rank, self.name = rank, f"llm{rank}"
        self.model = settings.model_of("llm", rank)
        self.log = setup_process(settings, self.name)
        self.slots = RequestSlots(settings.shm, ports.shm_prefix, ports.lock_path)
        self.processes = ProcessTable(settings.cfg, ports.shm_prefix, ports.lock_path, topology=settings.topology)
        self.init_sockets()
        self.init_engine()
        self.reqs: dict[int, LLMRequestState] = {}
        self.running: dict[str, LLMRequestState] = {}  # engine request id -> its request
        self.aborted = AbortedRequests()
        self.llm_tokens = metrics.LLM_TOKENS.labels(self.model.name)
        self.next_decode = 0  # index into self.decode_ranks where the round-robin goes on
        self.num_preemptions = 0  # the engine's, already counted in the metric
        self.report_clock = Every(REPORT_EVERY_S)
        self.batch_size = metrics.BATCH_SIZE.labels("llm", str(rank))
        self.step_time = {kind: metrics.LLM_STEP_TIME.labels(self.model.name, kind) for kind in ("prefill", "decode")}
        self.report()  # the gauges exist before the process says it is ready, not ~200 ms after its first wait

    def init_sockets(self) -> None:
        self.ctx = zmq.Context()
        self.handlers = Handlers(
            self.name,
            {
                AbortRequest: self.on_abort,
                LLMRequestIn: self.on_request_in,
                VCRequestIn: self.on_vc_request,
                TextTokens: self.on_text_tokens,
            },
        )
        self.inbox = Inbox(self.ctx, self.ports, self.processes, "llm", self.rank, self.handlers)
        self.decode_ranks = self.settings.topology.decode_ranks_of_llm(self.rank)  # this model's decode group
        self.to_decode = {r: Outbox(self.ctx, self.processes, "decode", r) for r in self.decode_ranks}
        self.http = HttpReplies(self.ctx, self.settings, self.processes, self.name)

    def init_engine(self) -> None:
        from light_tts.families import family_of
        from light_tts.llm.engine import LLMEngine

        device = resolve_device(self.settings, "llm", self.rank)
        set_process_title(self.name, model_on(self.settings, "llm", self.rank, device))
        self.family = family = family_of(self.model.model_dir)
        # the family's config carries its speech ids, stop set, min-length rule and sampling defaults
        spec = family.llm_spec(family.load_model_config(self.model.model_dir))
        self.engine = LLMEngine(spec, self.settings.llm_engine_config(device, self.rank), device)
        self.idle = IdleEngine(self.engine, self.cfg.idle_release_s, self.processes, "llm", self.rank, self.log)

    def loop(self) -> None:
        is_idle = True
        while not parent_is_gone(self.launcher_pid):
            self.processes.beat("llm", self.rank)
            # Block only when the engine has nothing to compute; otherwise just pick up what has arrived.
            for message in self.inbox.receive(200 if is_idle else 0, self.cfg.gpt_paral_num):
                try:
                    self.handlers(message)
                except Exception as e:  # one bad request must not take the process down
                    self.fail_message(message, e)
            step_started = now()
            outputs = self.step() if self.engine.has_unfinished() else []
            is_idle = not outputs
            if outputs:
                step_ended = now()
                self.route(outputs, step_started)
                self.batch_size.observe(self.engine.last_batch_size)
                kind = "prefill" if self.engine.last_batch_is_prefill else "decode"
                self.step_time[kind].observe(step_ended - step_started)
            self.idle.tick(has_work=bool(self.reqs) or self.engine.has_unfinished())
            if self.report_clock.due() or is_idle:
                self.report()

    def step(self) -> list:
        """One engine step. An exception inside it (a GPU out-of-memory error, a bug) fails the requests the engine
        was running, whose KV the aborts free, and the worker goes on serving the others."""
        try:
            return self.engine.step()
        except Exception as e:
            self.log.error("an LLM step failed; failing the requests it ran:\n%s", traceback.format_exc())
            for engine_id in self.engine.abort_running():
                state = self.running.pop(engine_id, None)
                if state is not None and self.reqs.pop(state.params.req_id, None) is not None:
                    state.is_running = False
                    self.http.fail(state.params.http_rank, state.params.req_id, step_error(e))
            return []

    def on_abort(self, message: AbortRequest) -> None:
        self.aborted.add(message.req_id)
        state = self.reqs.pop(message.req_id, None)
        if state is not None:
            self.stop_sentence(state)
        self.http.abort_done(message.http_rank, message.req_id)

    def on_request_in(self, message: LLMRequestIn) -> None:
        params = message.params
        if params.req_id in self.aborted:
            return
        text_tokens, speech_tokens = self.slots.read_llm_prompt(params.slot)
        self.idle.ensure_loaded()
        rank = self.start_decode(params, message.voice_key)
        if rank is not None:
            # the first chunk's pad aligns the flow's prompt (all its speech tokens, in every mode) to the chunk grid
            num_flow_prompt = int(self.slots.a["num_prompt_speech_tokens"][params.slot])
            first_chunk = self.settings.first_chunk_tokens(self.model.facts, num_flow_prompt) if params.stream else 0
            counted = len(text_tokens) if self.family.prompt_counts_in_length(params.mode) else 0
            self.reqs[params.req_id] = LLMRequestState(
                params,
                message.is_bistream,
                rank,
                text_tokens.tolist(),
                speech_tokens.tolist(),
                first_chunk_tokens=first_chunk,
                num_counted_prompt_tokens=counted,
            )

    def on_vc_request(self, message: VCRequestIn) -> None:
        """Voice conversion: the source's tokens are the request's one sentence, finished; nothing stays here."""
        params = message.params
        if params.req_id in self.aborted:
            return
        self.slots.trace.stamp(params.slot, "llm_queued")
        rank = self.start_decode(params, message.voice_key)
        if rank is not None:
            batch = SpeechTokenBatch()
            batch.append(
                params.req_id,
                0,
                message.source_tokens,
                True,
                True,
                sentence_seed(params.seed, 0),
                len(message.source_tokens),
            )
            self.slots.trace.stamp(params.slot, "first_hop_out")  # no prefill: the tokens go on as they came
            self.to_decode[rank].send(batch)

    def start_decode(self, params: RequestParams, voice_key: str) -> int | None:
        """Give the request to a decode process (its rank), or fail it (None) when none of its group runs."""
        rank = self.pick_decode_rank()
        if self.processes.state("decode", rank) != ProcessTable.READY:  # its failure may be handled already
            self.http.fail(
                params.http_rank,
                params.req_id,
                UnavailableError("no decode process of this model is running (one is restarting)"),
            )
            return None
        self.slots.set_decode_rank(params.slot, rank)  # before the send: a failure of `rank` fails this request
        self.to_decode[rank].send(DecodeStart(params, voice_key))
        metrics.STAGE_REQUESTS.labels("llm", str(self.rank)).inc()
        return rank

    def on_text_tokens(self, message: TextTokens) -> None:
        state = self.reqs.get(message.req_id)
        if state is None:
            return  # aborted, or failed here already
        state.num_text_tokens += sum(len(s) for s in message.sentences)
        fixed = state.params.fixed_speech_tokens
        if fixed is not None:  # a bistream utterance holds all its text; a sentence only its own
            longest = state.num_text_tokens if state.is_bistream else max(map(len, message.sentences), default=0)
            self.check_fixed_length_fits(state, longest, fixed)
        state.pending.extend(message.sentences)
        state.is_text_done = state.is_text_done or message.is_last
        if state.is_bistream:
            self.feed_bistream(state)
        elif not state.is_running:
            self.start_sentence(state)

    def fail_message(self, message, error: Exception) -> None:
        self.log.error("%s failed:\n%s", type(message).__name__, traceback.format_exc())
        req_id = message.params.req_id if isinstance(message, (LLMRequestIn, VCRequestIn)) else message.req_id
        state = self.reqs.pop(req_id, None)
        if state is not None:
            self.stop_sentence(state)
        params = state.params if state is not None else getattr(message, "params", None)
        if params is not None:
            self.http.fail(params.http_rank, params.req_id, error)

    def pick_decode_rank(self) -> int:
        """The running decode process of this model's group with room in its page pool and the most playback slack
        (then the most room, then the fewest requests), from the process table; ties go round-robin."""
        num = len(self.decode_ranks)
        order = [self.decode_ranks[(self.next_decode + i) % num] for i in range(num)]

        def preference(r: int) -> tuple:
            room, slack_ms = self.processes.room("decode", r)
            is_down = self.processes.state("decode", r) != ProcessTable.READY
            return is_down, room <= 0, -min(slack_ms, 10_000), -room, self.processes.load("decode", r)

        rank = min(order, key=preference)
        self.next_decode = (self.decode_ranks.index(rank) + 1) % num
        return rank

    def start_sentence(self, state: LLMRequestState) -> None:
        """Give the next sentence to the engine, if one is waiting."""
        if state.pending:
            self.submit(state, state.pending.popleft())

    def stop_sentence(self, state: LLMRequestState) -> None:
        if state.is_running:
            self.engine.abort(state.engine_id())
            self.running.pop(state.engine_id(), None)
            state.is_running = False

    def feed_bistream(self, state: LLMRequestState) -> None:
        """Start the utterance with its first piece, then append the rest; the last append says the text ended."""
        if state.sentence_idx < 0:
            if not state.pending and not state.is_text_done:
                return
            self.submit(state, state.pending.popleft() if state.pending else [])
        while state.pending:
            piece = state.pending.popleft()
            state.is_last_sent = state.is_text_done and not state.pending
            self.engine.append_text(state.engine_id(), piece, state.is_last_sent)
        if state.is_text_done and not state.is_last_sent:
            state.is_last_sent = True
            self.engine.append_text(state.engine_id(), [], True)

    def submit(self, state: LLMRequestState, text_tokens: list[int]) -> None:
        from light_tts.llm.request import LLMRequest

        fixed = state.params.fixed_speech_tokens
        state.sentence_idx += 1
        state.is_running = True
        counted = state.num_counted_prompt_tokens
        state.max_tokens = self.settings.sentence_speech_tokens(
            self.model.facts, None if state.is_bistream else len(text_tokens) + counted, fixed
        )
        self.running[state.engine_id()] = state
        if state.sentence_idx == 0:
            self.slots.trace.stamp(state.params.slot, "llm_queued")
        self.engine.add_request(
            LLMRequest(
                req_id=state.engine_id(),
                text_token_ids=text_tokens,
                prompt_text_token_ids=state.prompt_text_tokens,
                prompt_speech_token_ids=state.prompt_speech_tokens,
                seed=state.sentence_seed(),
                bistream=state.is_bistream,
                min_len=fixed,
                max_len=state.max_tokens,
                num_counted_prompt_tokens=0 if state.is_bistream else counted,
            )
        )

    def check_fixed_length_fits(self, state: LLMRequestState, num_text_tokens: int, fixed: int) -> None:
        """A fixed-length sentence must fit one engine request whole, or it would silently end early."""
        num_inputs = 2 + len(state.prompt_text_tokens) + num_text_tokens + len(state.prompt_speech_tokens)
        if num_inputs + fixed > self.cfg.max_req_total_len:
            raise RequestError(
                f"fixed_speech_tokens={fixed} does not fit: the prompt and text take {num_inputs} of "
                f"the {self.cfg.max_req_total_len} tokens one request may hold (--max_req_total_len)"
            )

    def route(self, outputs, step_started: float) -> None:
        """One SpeechTokenBatch per decode process for this step's outputs; finished sentences start the next.
        The first sentence's tokens stamp the request's trace: its prefill (the step of its first token) and the
        send of its first chunk's tokens."""
        batches = {rank: SpeechTokenBatch() for rank in self.decode_ranks}
        step_ended, first_hops = now(), []
        for out in outputs:
            state = self.running.get(out.req_id)
            if state is None:
                continue
            req_id = state.params.req_id
            if state.sentence_idx == 0 and self.crosses_first_hop(state, out, step_started, step_ended):
                first_hops.append(state.params.slot)
            self.llm_tokens.inc(len(out.new_token_ids))
            if out.finished:
                del self.running[out.req_id]
                state.is_running = False
            if out.finished and out.finish_reason and out.finish_reason.startswith("error"):
                # the engine refuses bad inputs this way (e.g. a prompt longer than --max_req_total_len)
                self.log.warning("request %d refused by the engine: %s", req_id, out.finish_reason)
                self.http.fail(state.params.http_rank, req_id, RequestError(out.finish_reason.partition(":")[2]))
                del self.reqs[req_id]
                continue
            is_request_end = out.finished and (state.is_bistream or (state.is_text_done and not state.pending))
            batches[state.decode_rank].append(
                req_id,
                state.sentence_idx,
                list(out.new_token_ids),
                out.finished,
                is_request_end,
                state.sentence_seed(),
                state.max_tokens,
            )
            if is_request_end:
                del self.reqs[req_id]
            elif out.finished:
                self.start_sentence(state)
        sent_at = now()  # before the sends: the decode process stamps after them
        for slot in first_hops:
            self.slots.trace.stamp(slot, "first_hop_out", sent_at)
        for rank, batch in batches.items():
            if len(batch):
                self.to_decode[rank].send(batch)

    def crosses_first_hop(self, state: LLMRequestState, out, step_started: float, step_ended: float) -> bool:
        """Stamp the prefill of the request's first token; True when this output completes its first audio
        chunk's tokens (a stream's first hop, or a non-stream request's whole first sentence)."""
        slot, before = state.params.slot, state.num_first_tokens
        if out.new_token_ids and self.slots.trace.stamp_once(slot, "prefill_started", step_started):
            self.slots.trace.stamp(slot, "prefill_done", step_ended)
        state.num_first_tokens += len(out.new_token_ids)
        return completes_first_chunk(before, state.num_first_tokens, state.first_chunk_tokens or None, out.finished)

    def report(self) -> None:
        for engine_id, reason in self.engine.take_waits():  # each wait, once: why, and a count by reason
            state = self.running.get(engine_id)
            if state is not None:
                self.log.info(
                    "request %d waits in the LLM for %s",
                    state.params.req_id,
                    "KV-cache room" if reason == "kv" else "a batch row (--running_max_req_size)",
                )
                metrics.WAITS.labels("llm", reason).inc()
        preemptions = self.engine.scheduler.num_preemptions
        if preemptions > self.num_preemptions:
            metrics.LLM_PREEMPTIONS.labels(self.model.name).inc(preemptions - self.num_preemptions)
            self.num_preemptions = preemptions
        self.processes.set_load("llm", self.rank, len(self.reqs))
        metrics.QUEUE_DEPTH.labels("llm", str(self.rank)).set(len(self.reqs))
        stats = self.engine.stats()
        name = self.model.name
        metrics.KV_CACHE_USAGE.labels(name).set(stats["kv_used_tokens"] / max(1, stats["kv_total_tokens"]))
        for state in ("used", "cached", "total"):
            metrics.KV_CACHE_TOKENS.labels(state, name).set(stats[f"kv_{state}_tokens"])


def run_llm_process(settings: ServerSettings, ports: PortArgs, rank: int, ready_pipe) -> None:
    """Process entry (see worker_common.serve)."""
    serve(lambda: LLMWorker(settings, ports, rank, os.getppid()), "llm", rank, ready_pipe)
