"""LLM process: speech-token LM with continuous batching; streams each step's tokens to the decode processes.

A request's sentences run through the engine one after another (sentence k+1 starts when k finishes, so its
audio follows k's), each as an engine request `"{req_id}:{k}"` seeded with sentence_seed(seed, k) as the
offline pipeline does. A bistream request is one engine request fed text pieces as they arrive.
Each request is assigned to a decode process at arrival: the least loaded one, round-robin among equals.
"""

from __future__ import annotations

import os
import traceback
from collections import deque
from dataclasses import dataclass, field

import zmq

from light_tts.errors import RequestError
from light_tts.server import metrics
from light_tts.server.config import ServerConfig
from light_tts.server.io_struct import (AbortRequest, DecodeStart, LLMRequestIn, RequestParams, SpeechTokenBatch,
                                        TextTokens)
from light_tts.server.shm import ProcessTable, RequestSlots
from light_tts.server.topology import PortArgs
from light_tts.server.worker_common import (AbortedRequests, HttpReplies, Inbox, connect_pushes, parent_is_gone,
                                            resolve_device, serve, setup_process)


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

    def engine_id(self) -> str:
        return f"{self.params.req_id}:{self.sentence_idx}"

    def sentence_seed(self) -> int:
        from light_tts.pipeline import sentence_seed

        return self.params.seed if self.is_bistream else sentence_seed(self.params.seed, self.sentence_idx)


class LLMWorker:
    def __init__(self, cfg: ServerConfig, ports: PortArgs, launcher_pid: int):
        self.cfg, self.ports, self.launcher_pid = cfg, ports, launcher_pid
        self.log = setup_process(cfg, "llm")
        self.slots = RequestSlots(cfg, ports.shm_prefix, ports.lock_path)
        self.processes = ProcessTable(cfg, ports.shm_prefix)
        self.init_engine()
        self.init_sockets()
        self.reqs: dict[int, LLMRequestState] = {}
        self.aborted = AbortedRequests()
        self.next_decode_rank = 0

    def init_engine(self) -> None:
        from light_tts.llm.engine import EngineConfig, LLMEngine
        from light_tts.model_dir import load_model_config

        device = resolve_device(self.cfg, "llm")
        c = self.cfg
        engine_cfg = EngineConfig(
            max_total_token_num=c.max_total_token_num, batch_max_tokens=c.batch_max_tokens or c.max_req_total_len,
            running_max_req_size=c.running_max_req_size, graph_max_batch_size=c.graph_max_batch_size,
            disable_cudagraph=c.disable_cudagraph, data_type=c.data_type if device != "cpu" else "float32",
            router_max_wait_tokens=c.router_max_wait_tokens, max_req_total_len=c.max_req_total_len)
        self.engine = LLMEngine(load_model_config(c.model_dir), engine_cfg, device)

    def init_sockets(self) -> None:
        self.ctx = zmq.Context()
        self.inbox = Inbox(self.ctx, self.ports.llm_url)
        self.to_decode = connect_pushes(self.ctx, self.ports.decode_urls)
        self.http = HttpReplies(self.ctx, self.ports, "llm")

    def loop(self) -> None:
        is_idle = True
        while not parent_is_gone(self.launcher_pid):
            # Block only when the engine has nothing to compute; otherwise just pick up what has arrived.
            for message in self.inbox.receive(200 if is_idle else 0, self.cfg.gpt_paral_num):
                try:
                    self.handle(message)
                except Exception as e:  # one bad request must not take the process down
                    self.fail_message(message, e)
            outputs = self.engine.step() if self.engine.has_unfinished() else []
            is_idle = not outputs
            if outputs:
                self.route(outputs)
                metrics.BATCH_SIZE.labels("llm", "0").observe(self.engine.last_batch_size)
            self.report()

    def handle(self, message) -> None:
        if isinstance(message, AbortRequest):
            self.abort(message)
            return
        req_id = message.params.req_id if isinstance(message, LLMRequestIn) else message.req_id
        if req_id in self.aborted:
            return
        if isinstance(message, LLMRequestIn):
            self.add_request(message)
        elif isinstance(message, TextTokens) and req_id in self.reqs:
            state = self.reqs[req_id]
            state.pending.extend(message.sentences)
            state.is_text_done = state.is_text_done or message.is_last
            if state.is_bistream:
                self.feed_bistream(state)
            elif not state.is_running:
                self.start_sentence(state)

    def fail_message(self, message, error: Exception) -> None:
        self.log.error("%s failed:\n%s", type(message).__name__, traceback.format_exc())
        params = message.params if isinstance(message, LLMRequestIn) else None
        state = self.reqs.pop(params.req_id if params else message.req_id, None)
        if state is not None:
            params = state.params
            if state.is_running:
                self.engine.abort(state.engine_id())
        if params is not None:
            self.http.fail(params.http_rank, params.req_id, error)

    def add_request(self, message: LLMRequestIn) -> None:
        params = message.params
        text_tokens, speech_tokens, _, _ = self.slots.read_prompt(params.slot)
        rank = self.pick_decode_rank()
        self.reqs[params.req_id] = LLMRequestState(params, message.is_bistream, rank, text_tokens.tolist(),
                                                   speech_tokens.tolist())
        self.to_decode[rank].send_pyobj(DecodeStart(params))
        metrics.STAGE_REQUESTS.labels("llm", "0").inc()

    def pick_decode_rank(self) -> int:
        """Least loaded decode process (load read from the process table); ties go round-robin."""
        num = len(self.to_decode)
        order = [(self.next_decode_rank + i) % num for i in range(num)]
        rank = min(order, key=lambda r: self.processes.load("decode", r))
        self.next_decode_rank = (rank + 1) % num
        return rank

    def start_sentence(self, state: LLMRequestState) -> None:
        """Give the next sentence to the engine, if one is waiting."""
        if state.pending:
            self.submit(state, state.pending.popleft())

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

        state.sentence_idx += 1
        state.is_running = True
        self.engine.add_request(LLMRequest(
            req_id=state.engine_id(), text_token_ids=text_tokens, prompt_text_token_ids=state.prompt_text_tokens,
            prompt_speech_token_ids=state.prompt_speech_tokens, seed=state.sentence_seed(),
            bistream=state.is_bistream))

    def route(self, outputs) -> None:
        """One SpeechTokenBatch per decode process for this step's outputs; finished sentences start the next."""
        batches = [SpeechTokenBatch() for _ in self.to_decode]
        for out in outputs:
            req_id = int(out.req_id.split(":")[0])
            state = self.reqs.get(req_id)
            if state is None:
                continue
            metrics.LLM_TOKENS.inc(len(out.new_token_ids))
            if out.finished and out.finish_reason and out.finish_reason.startswith("error"):
                # the engine refuses bad inputs this way (e.g. a prompt longer than --max_req_total_len)
                self.log.warning("request %d refused by the engine: %s", req_id, out.finish_reason)
                self.http.fail(state.params.http_rank, req_id, RequestError(out.finish_reason[len("error:"):]))
                del self.reqs[req_id]
                continue
            is_request_end = out.finished and (state.is_bistream or (state.is_text_done and not state.pending))
            batches[state.decode_rank].append(req_id, state.sentence_idx, list(out.new_token_ids), out.finished,
                                              is_request_end, state.sentence_seed())
            if out.finished:
                state.is_running = False
                if is_request_end:
                    del self.reqs[req_id]
                else:
                    self.start_sentence(state)
        for rank, batch in enumerate(batches):
            if len(batch):
                self.to_decode[rank].send_pyobj(batch)

    def abort(self, message: AbortRequest) -> None:
        self.aborted.add(message.req_id)
        state = self.reqs.pop(message.req_id, None)
        if state is not None and state.is_running:
            self.engine.abort(state.engine_id())
        self.http.abort_done(message.http_rank, message.req_id)

    def report(self) -> None:
        self.processes.set_load("llm", 0, len(self.reqs))
        metrics.QUEUE_DEPTH.labels("llm", "0").set(len(self.reqs))
        stats = self.engine.stats()
        metrics.KV_CACHE_USAGE.set(stats["kv_used_tokens"] / max(1, stats["kv_total_tokens"]))


def run_llm_process(cfg: ServerConfig, ports: PortArgs, ready_pipe) -> None:
    """Process entry (see worker_common.serve)."""
    serve(lambda: LLMWorker(cfg, ports, os.getppid()), "llm", 0, ready_pipe)
