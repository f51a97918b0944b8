"""Encode process: request text -> sentences -> text tokens; prompt audio -> speech tokens, embedding, mel.
A model without prompt audio (Orpheus) gets each sentence's whole LLM prompt, its named voice in it, and no
prompt features.

It serves every model: one frontend per distinct frontend_key, the request's model named by its slot. Reads a
request's inputs from its slot, writes the encoded prompt back into the slot (through the shared voice cache, so
a repeated voice skips both ONNX models) and hands the request to the least loaded LLM replica of its model. A saved
voice's features come with the request (the HTTP worker wrote them into the slot): only its texts are
tokenized here. A voice upload's features are computed here once (ComputeFeatures) and answered FeaturesReady.
The LLM's prompt follows the request's mode, as the model's family builds it (transcript and prompt speech,
an instruction, or nothing); a voice conversion's source recording becomes speech tokens here (VCRequestIn).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field

import numpy as np
import zmq

from light_tts.errors import LightTTSError, TextError
from light_tts.families import family_of
from light_tts.frontend.text_norm import PieceJoiner, is_only_punctuation
from light_tts.request_rules import VC
from light_tts.server.ipc.channels import Handlers, HttpReplies, Inbox, Outbox
from light_tts.server.ipc.io_struct import (
    AbortRequest,
    ComputeFeatures,
    EncodeRequest,
    FeaturesReady,
    LLMRequestIn,
    RequestParams,
    TextPiece,
    TextTokens,
    VCRequestIn,
)
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.ipc.shm import VOICE_KINDS, RequestSlots
from light_tts.server.ipc.voice_cache import VoiceCache, voice_cache_key
from light_tts.server.metrics import prometheus as metrics
from light_tts.server.runtime.devices import pick_least_loaded
from light_tts.server.runtime.process import model_on, parent_is_gone, setup_process
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs
from light_tts.server.workers.worker_common import AbortedRequests, serve


class EncodeWorker:
    def __init__(self, settings: ServerSettings, ports: PortArgs, rank: int, launcher_pid: int):
        self.settings, self.cfg, self.ports, self.rank = settings, settings.cfg, ports, rank
        self.launcher_pid = launcher_pid
        self.name = f"encode{rank}"
        self.log = setup_process(settings, self.name, model_on(settings, "encode", rank))
        self.init_shared_memory()
        self.init_sockets()
        self.init_frontend()
        self.bistream: dict[int, BistreamText] = {}  # bistream requests whose text is still arriving
        self.aborted = AbortedRequests()
        self.queue_depth = metrics.QUEUE_DEPTH.labels("encode", str(rank))

    def init_shared_memory(self) -> None:
        s, p = self.settings, self.ports
        self.slots = RequestSlots(s.shm, p.shm_prefix, p.lock_path)
        self.processes = ProcessTable(s.cfg, p.shm_prefix, p.lock_path, topology=s.topology)
        self.voices = VoiceCache(s.shm, p.shm_prefix, p.lock_path)

    def init_sockets(self) -> None:
        """Bind and publish the inbox first (peers can connect while the models load)."""
        self.ctx = zmq.Context()
        self.handlers = Handlers(
            self.name,
            {
                AbortRequest: self.on_abort,
                EncodeRequest: self.on_encode_request,
                TextPiece: self.on_text_piece,
                ComputeFeatures: self.on_compute_features,
            },
        )
        self.inbox = Inbox(self.ctx, self.ports, self.processes, "encode", self.rank, self.handlers)
        self.to_llm = [Outbox(self.ctx, self.processes, "llm", r) for r in self.settings.topology.ranks("llm")]
        self.num_sent = 0  # requests sent on: the tie-breaking turn of pick_least_loaded
        self.http = HttpReplies(self.ctx, self.settings, self.processes, self.name)

    def init_frontend(self) -> None:
        """One frontend per distinct frontend_key (models with the same speech tokenizer, speaker model and text
        tokenizer share it), loaded now so that a first request does not wait for it."""
        from light_tts.server.runtime.process import resolve_device

        resolve_device(self.settings)  # sets the torch thread count; text and features run on the CPU
        device = self.settings.prompt_device()  # the prompt models: torch on a GPU, or ONNX Runtime
        self.families = [family_of(entry.model_dir) for entry in self.settings.models]  # by model index
        self.frontends = {}
        for entry, family in zip(self.settings.models, self.families):
            if entry.frontend_key not in self.frontends:
                frontend = family.frontend(
                    family.load_model_config(entry.model_dir),
                    self.cfg.max_text_chars,
                    self.cfg.max_prompt_seconds,
                    prompt_device=device,
                )
                frontend.warm_up()
                self.frontends[entry.frontend_key] = frontend
                if entry.facts.takes_prompt_audio:  # else it has no prompt models
                    self.log.info(
                        "model %s: speech tokenizer on %s, speaker model on %s",
                        entry.name,
                        frontend.speech_tokenizer.runner.backend,
                        frontend.campplus.runner.backend,
                    )

    def frontend_of(self, slot: int):
        """The frontend of the request's model (the slot's model column)."""
        return self.frontends[self.settings.models[self.slots.model_of(slot)].frontend_key]

    def voice_key(self, slot: int, wav: bytes) -> str:
        """The voice cache key: the audio's key under the request's model's frontend, so that models with the same
        frontend files share entries and others do not."""
        entry = self.settings.models[self.slots.model_of(slot)]
        return voice_cache_key(entry.frontend_key, self.frontend_of(slot).voice_key(wav))

    def loop(self) -> None:
        while not parent_is_gone(self.launcher_pid):
            self.processes.beat("encode", self.rank)
            messages = self.inbox.receive(timeout_ms=200, max_messages=self.cfg.encode_paral_num)
            for i, message in enumerate(messages):
                self.queue_depth.set(len(messages) - i + len(self.bistream))
                # busy with this turn: the HTTP workers send new requests to a free encode process first
                self.processes.set_load("encode", self.rank, len(messages) - i)
                try:
                    self.handlers(message)
                except Exception as e:  # a bug must fail one request, not the process
                    self.log.error("%s failed:\n%s", type(message).__name__, traceback.format_exc())
                    if isinstance(message, EncodeRequest):
                        self.http.fail(message.params.http_rank, message.params.req_id, e)
                    elif isinstance(message, ComputeFeatures):
                        self.http.fail(message.http_rank, message.req_id, e)
            self.queue_depth.set(len(self.bistream))
            self.processes.set_load("encode", self.rank, 0)

    def on_abort(self, message: AbortRequest) -> None:
        self.aborted.add(message.req_id)
        self.bistream.pop(message.req_id, None)
        self.http.abort_done(message.http_rank, message.req_id)

    def on_text_piece(self, message: TextPiece) -> None:
        if message.req_id in self.bistream:  # else aborted or failed already
            self.encode_piece(message)

    def on_encode_request(self, message: EncodeRequest) -> None:
        params = message.params
        if params.req_id in self.aborted:
            return
        metrics.STAGE_REQUESTS.labels("encode", str(self.rank)).inc()
        trace = self.slots.trace
        trace.stamp(params.slot, "encode_started")
        is_vc = params.mode == VC
        try:
            sentences = [] if message.is_bistream or is_vc else self.encode_text(params.slot, message.voice)
            llm_prompt = None if is_vc else self.llm_prompt(params.slot, params.mode)  # text errors before models
            trace.stamp(params.slot, "text_done")
            source_tokens = self.encode_source(params.slot) if is_vc else None
            if not self.settings.models[self.slots.model_of(params.slot)].facts.takes_prompt_audio:
                voice_key = message.voice or ""  # a name in the LLM's prompt: no prompt to encode
            elif message.saved_voice_key is not None:
                metrics.PROMPT_FEATURES.labels("saved").inc()
                self.slots.a["voice_kind"][params.slot] = VOICE_KINDS.index("saved")
                voice_key = message.saved_voice_key
            else:
                voice_key = self.encode_prompt(params.slot)
            if llm_prompt is not None:
                self.slots.write_llm_prompt(params.slot, *llm_prompt)
        except LightTTSError as e:
            self.http.fail(params.http_rank, params.req_id, e)
            return
        except Exception as e:  # a bug must fail one request, not the process
            self.log.error("request %d (%s) failed:\n%s", params.req_id, params.mode, traceback.format_exc())
            self.http.fail(params.http_rank, params.req_id, e)
            return
        to_llm = self.llm_of(params.slot)
        trace.stamp(params.slot, "encode_done")  # before the send: the LLM stamps after it
        if is_vc:
            to_llm.send(VCRequestIn(params, voice_key, source_tokens.tolist()))
            return
        to_llm.send(LLMRequestIn(params, voice_key, message.is_bistream))
        if message.is_bistream:
            self.bistream[params.req_id] = BistreamText(params, self.frontend_of(params.slot).piece_joiner())
        else:
            to_llm.send(TextTokens(params.req_id, sentences, is_last=True))

    def llm_of(self, slot: int) -> Outbox:
        """The LLM replica of the request: chosen once, when its first message goes on (the least loaded ready
        replica of its model; any replica when none is ready, whose restart will fail it), and recorded in the
        slot so that its later text pieces follow and a replica's failure fails only its own requests."""
        rank = self.slots.llm_rank_of(slot)
        if rank < 0:
            ranks = self.settings.topology.llm_ranks_of(self.settings.model_names[self.slots.model_of(slot)])
            ready = [r for r in ranks if self.processes.state("llm", r) == ProcessTable.READY] or ranks
            rank = pick_least_loaded(ready, {r: self.processes.load("llm", r) for r in ready}, self.num_sent)
            self.num_sent += 1
            self.slots.set_llm_rank(slot, rank)
        return self.to_llm[rank]

    def on_compute_features(self, message: ComputeFeatures) -> None:
        """A voice upload: its features into the slot (and the voice cache, which shares the saved voice's key)."""
        if message.req_id in self.aborted:
            return
        wav = self.slots.read_bytes(message.slot, "wav")
        try:
            features, duration_s = self.compute_features(message.slot, wav)
            self.voices.put(self.voice_key(message.slot, wav), *features)
            self.slots.write_prompt_features(message.slot, *features)
        except Exception as e:  # bad audio is the client's (4xx); anything else is logged as a bug
            if not isinstance(e, LightTTSError):
                self.log.error("request %d failed:\n%s", message.req_id, traceback.format_exc())
            self.http.fail(message.http_rank, message.req_id, e)
            return
        self.http.send(message.http_rank, FeaturesReady(message.req_id, duration_s))

    def compute_features(self, slot: int, wav: bytes) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]:
        """(speech tokens, embedding, mel) and the audio's seconds, by the frontend of the slot's model: the only
        place the speech tokenizer and the speaker model run (counted as source="computed"); raises AudioError."""
        frontend = self.frontend_of(slot)
        samples, rate = frontend.decode_prompt_audio(wav)
        features = frontend.audio_features(samples, rate)
        metrics.PROMPT_FEATURES.labels("computed").inc()
        return features, len(samples) / rate

    def encode_text(self, slot: int, voice: str | None) -> list[list[int]]:
        """The LLM's ids of each sentence, by the model's frontend: the text tokens (CosyVoice), or the whole prompt
        with the named voice (Orpheus)."""
        text = self.slots.read_bytes(slot, "text").decode("utf-8")
        sentences = self.frontend_of(slot).sentence_tokens(text, voice)
        self.slots.a["usage_text_tokens"][slot] = sum(map(len, sentences))
        return sentences

    def encode_prompt(self, slot: int) -> str:
        """The prompt audio's features, from the voice cache when this audio was seen before; returns the voice
        key."""
        wav = self.slots.read_bytes(slot, "wav")
        key = self.voice_key(slot, wav)
        cached = self.voices.get(key)
        metrics.VOICE_CACHE_LOOKUPS.labels("hit" if cached else "miss").inc()
        if cached is None:
            features, _ = self.compute_features(slot, wav)
            self.voices.put(key, *features)
        else:
            metrics.PROMPT_FEATURES.labels("cache").inc()
            features = cached
        self.slots.a["voice_kind"][slot] = VOICE_KINDS.index("new" if cached is None else "saved")
        self.slots.write_prompt_features(slot, *features)
        return key

    def llm_prompt(self, slot: int, mode: str) -> tuple[np.ndarray, bool]:
        """(text tokens, whether the prompt speech goes too) of the LLM's prompt in `mode`, as the family of the
        request's model builds it from the slot's transcript and instruction. A family without modes (Orpheus) has
        none: each sentence's ids are its whole prompt (encode_text)."""
        family = self.families[self.slots.model_of(slot)]
        if not family.modes:
            return np.zeros(0, np.int32), False
        transcript = self.slots.read_bytes(slot, "prompt_text").decode("utf-8")
        instruction = self.slots.read_bytes(slot, "instruct_text").decode("utf-8")
        built = family.llm_prompt(mode, transcript, instruction)
        text_tokens = self.frontend_of(slot).prompt_text_tokens(built.text) if built.text else np.zeros(0, np.int32)
        if len(text_tokens) > self.slots.a["prompt_text_tokens"].shape[1]:
            raise TextError(f"the prompt text is {len(text_tokens)} tokens, longer than the server accepts")
        return text_tokens, built.uses_prompt_speech

    def encode_source(self, slot: int) -> np.ndarray:
        """A voice conversion's source recording -> speech tokens (the speech tokenizer only); TooLargeError (413)
        past the server's bound."""
        wav = self.slots.read_bytes(slot, "source_wav")
        tokens, _ = self.frontend_of(slot).source_speech_tokens(wav, self.settings.max_vc_source_seconds)
        return tokens

    def encode_piece(self, piece: TextPiece) -> None:
        """Bistream text goes to the LLM as it comes, tokenized as-is (as the offline bistream pipeline does),
        once the text so far has something to speak; a text that never has is refused, as it is over HTTP."""
        text = self.bistream[piece.req_id]
        try:
            sentences = text.add(piece, self.frontend_of(text.params.slot))
        except Exception as e:
            if not isinstance(e, LightTTSError):
                self.log.error("request %d: text piece failed:\n%s", piece.req_id, traceback.format_exc())
            del self.bistream[piece.req_id]
            self.http.fail(text.params.http_rank, piece.req_id, e)
            return
        if sentences is not None:
            self.slots.a["usage_text_tokens"][text.params.slot] += sum(map(len, sentences))
            self.llm_of(text.params.slot).send(TextTokens(piece.req_id, sentences, piece.is_last))
        if piece.is_last:
            del self.bistream[piece.req_id]


@dataclass
class BistreamText:
    """The text of a bistream request while it arrives. Pieces are held back until the text so far has something
    to speak (judged as the HTTP endpoint judges a whole text), so an empty, emoji-only or punctuation-only text
    ends with the same error as over HTTP instead of being voiced."""

    params: RequestParams
    joiner: PieceJoiner  # keeps a control tag that a piece cuts in two whole for the next piece
    held: list[list[int]] = field(default_factory=list)  # token lists of the pieces held back
    text: str = ""  # the text received while nothing speakable was seen
    is_speakable: bool = False

    def add(self, piece: TextPiece, frontend) -> list[list[int]] | None:
        """Token lists to send to the LLM now (None: keep waiting); raises TextError for a text with no speech."""
        texts = [self.joiner.add(piece.text)] + ([self.joiner.finish()] if piece.is_last else [])
        pieces = [tokens for tokens in map(frontend.piece_tokens, texts) if tokens]  # as the offline pipeline
        if self.is_speakable:
            return pieces
        self.text += piece.text
        self.held += pieces
        # normalising is costly: only a piece with more than punctuation, or the end, can change the verdict
        if piece.is_last or not is_only_punctuation(piece.text):
            self.is_speakable = frontend.normalizer.has_speech(self.text)
        if not self.is_speakable:
            if piece.is_last:
                raise TextError("tts_text has nothing to speak: it is empty, or only punctuation or symbols")
            return None
        sentences, self.held, self.text = self.held, [], ""
        return sentences


def run_encode_process(settings: ServerSettings, ports: PortArgs, rank: int, ready_pipe) -> None:
    """Process entry (see worker_common.serve)."""
    serve(lambda: EncodeWorker(settings, ports, rank, os.getppid()), "encode", rank, ready_pipe)
