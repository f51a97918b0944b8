"""Encode process: request text -> sentences -> text tokens; prompt audio -> speech tokens, embedding, mel.

Reads a request's inputs from its slot, writes the encoded prompt back into the slot (through the shared
voice cache, so a repeated voice skips both ONNX models) and hands the request to the LLM process.
"""

from __future__ import annotations

import os
import traceback

import numpy as np
import zmq

from light_tts.errors import LightTTSError, TextError
from light_tts.server import metrics
from light_tts.server.config import ServerConfig
from light_tts.server.io_struct import AbortRequest, EncodeRequest, LLMRequestIn, RequestParams, TextPiece, TextTokens
from light_tts.server.shm import ProcessTable, RequestSlots
from light_tts.server.topology import PortArgs
from light_tts.server.voice_cache import VoiceCache
from light_tts.server.worker_common import AbortedRequests, HttpReplies, Inbox, parent_is_gone, serve, setup_process


class EncodeWorker:
    def __init__(self, cfg: ServerConfig, ports: PortArgs, rank: int, launcher_pid: int):
        self.cfg, self.ports, self.rank, self.launcher_pid = cfg, ports, rank, launcher_pid
        self.name = f"encode{rank}"
        self.log = setup_process(cfg, self.name)
        self.init_shared_memory()
        self.init_frontend()
        self.init_sockets()
        self.bistream: dict[int, RequestParams] = {}  # bistream requests whose text is still arriving
        self.aborted = AbortedRequests()
        self.queue_depth = metrics.QUEUE_DEPTH.labels("encode", str(rank))

    def init_shared_memory(self) -> None:
        self.slots = RequestSlots(self.cfg, self.ports.shm_prefix, self.ports.lock_path)
        self.processes = ProcessTable(self.cfg, self.ports.shm_prefix)
        self.voices = VoiceCache(self.cfg, self.ports.shm_prefix, self.ports.lock_path)

    def init_frontend(self) -> None:
        from light_tts.frontend.frontend import Frontend
        from light_tts.model_dir import load_model_config
        from light_tts.server.worker_common import resolve_device

        resolve_device(self.cfg)  # sets the torch thread count; the frontend itself runs on the CPU
        self.frontend = Frontend(load_model_config(self.cfg.model_dir), self.cfg.max_text_chars,
                                 self.cfg.max_prompt_seconds)

    def init_sockets(self) -> None:
        self.ctx = zmq.Context()
        self.inbox = Inbox(self.ctx, self.ports.encode_urls[self.rank])
        self.to_llm = self.ctx.socket(zmq.PUSH)
        self.to_llm.connect(self.ports.llm_url)
        self.http = HttpReplies(self.ctx, self.ports, self.name)

    def loop(self) -> None:
        while not parent_is_gone(self.launcher_pid):
            messages = self.inbox.receive(timeout_ms=200, max_messages=self.cfg.encode_paral_num)
            for i, message in enumerate(messages):
                self.queue_depth.set(len(messages) - i + len(self.bistream))
                self.handle(message)
            self.queue_depth.set(len(self.bistream))
            self.processes.set_load("encode", self.rank, len(self.bistream))

    def handle(self, message) -> None:
        if isinstance(message, AbortRequest):
            self.aborted.add(message.req_id)
            self.bistream.pop(message.req_id, None)
            self.http.abort_done(message.http_rank, message.req_id)
        elif isinstance(message, EncodeRequest) and message.params.req_id not in self.aborted:
            self.encode_request(message)
        elif isinstance(message, TextPiece) and message.req_id in self.bistream:
            self.encode_piece(message)

    def encode_request(self, message: EncodeRequest) -> None:
        params = message.params
        metrics.STAGE_REQUESTS.labels("encode", str(self.rank)).inc()
        try:
            sentences = [] if message.is_bistream else self.encode_text(params.slot)
            self.encode_prompt(params.slot)
        except LightTTSError as e:
            self.http.fail(params.http_rank, params.req_id, e)
            return
        except Exception as e:  # a bug must fail one request, not the process
            self.log.error("request %d failed:\n%s", params.req_id, traceback.format_exc())
            self.http.fail(params.http_rank, params.req_id, e)
            return
        self.to_llm.send_pyobj(LLMRequestIn(params, message.is_bistream))
        if message.is_bistream:
            self.bistream[params.req_id] = params
        else:
            self.to_llm.send_pyobj(TextTokens(params.req_id, sentences, is_last=True))

    def encode_text(self, slot: int) -> list[list[int]]:
        text = self.slots.read_bytes(slot, "text").decode("utf-8")
        sentences = [self.frontend.tokenize(s) for s in self.frontend.normalize_and_split(text)]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise TextError("tts_text has nothing to speak after normalisation")
        return sentences

    def encode_prompt(self, slot: int) -> None:
        """Prompt text tokens always; the audio features from the voice cache when this audio was seen before."""
        wav = self.slots.read_bytes(slot, "wav")
        prompt_text = self.slots.read_bytes(slot, "prompt_text").decode("utf-8")
        key = self.frontend.voice_key(wav)
        cached = self.voices.get(key)
        metrics.VOICE_CACHE_LOOKUPS.labels("hit" if cached else "miss").inc()
        if cached is None:
            prompt = self.frontend.encode_prompt(wav, prompt_text)
            self.voices.put(key, prompt.speech_tokens, prompt.embedding, prompt.mel)
            text_tokens, speech_tokens, embedding, mel = (prompt.text_tokens, prompt.speech_tokens, prompt.embedding,
                                                          prompt.mel)
        else:
            normalized = self.frontend.normalizer.normalize(prompt_text)
            text_tokens = np.asarray(self.frontend.tokenize(normalized), dtype=np.int32)
            speech_tokens, embedding, mel = cached
        if len(text_tokens) > self.slots.a["prompt_text_tokens"].shape[1]:
            raise TextError(f"prompt_text is {len(text_tokens)} tokens, longer than the server accepts")
        self.slots.write_prompt(slot, text_tokens, speech_tokens, embedding, mel)

    def encode_piece(self, piece: TextPiece) -> None:
        """Bistream text goes to the LLM as it comes, tokenized as-is (as the offline bistream pipeline does)."""
        params = self.bistream[piece.req_id]
        try:
            tokens = self.frontend.tokenize(piece.text) if piece.text else []
        except Exception as e:
            self.log.error("request %d: text piece failed:\n%s", params.req_id, traceback.format_exc())
            del self.bistream[params.req_id]
            self.http.fail(params.http_rank, params.req_id, e)
            return
        self.to_llm.send_pyobj(TextTokens(piece.req_id, [tokens] if tokens else [], piece.is_last))
        if piece.is_last:
            del self.bistream[params.req_id]


def run_encode_process(cfg: ServerConfig, ports: PortArgs, rank: int, ready_pipe) -> None:
    """Process entry (see worker_common.serve)."""
    serve(lambda: EncodeWorker(cfg, ports, rank, os.getppid()), "encode", rank, ready_pipe)
