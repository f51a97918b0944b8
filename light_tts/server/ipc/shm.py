"""Shared-memory state: request slots (inputs, prompt features, audio ring), and the segments they live in.

The launcher creates every segment once and unlinks it at exit; workers attach by name. Segments are
sparse tmpfs files, so only the bytes actually written take memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import shared_memory

import numpy as np

from light_tts.server.ipc.audio_ring import AudioRing
from light_tts.server.ipc.stage_trace import BOUNDARIES, StageTrace
from light_tts.server.runtime.settings import ShmSizes

# voice_kind: 0 not known yet; a saved voice or a prompt the voice cache already had (no model ran); a new one
VOICE_KINDS = ("none", "saved", "new")

Tokens = Sequence[int] | np.ndarray  # token ids as a list or an int array


CLIENT_AT_LIMIT = -1  # RequestSlots.claim: the client already holds its share of the slots


def client_key(address: str) -> int:
    """A stable non-zero int64 for a client address (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256(address.encode()).digest()[:8], "little") >> 1 | 1


class ShmArrays:
    """Named numpy arrays, each in its own shared-memory segment `{prefix}_{name}`."""

    def __init__(self, prefix: str, specs: dict[str, tuple[tuple[int, ...], type]], create: bool):
        self.segments: dict[str, shared_memory.SharedMemory] = {}
        self.arrays: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in specs.items():
            nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
            seg = shared_memory.SharedMemory(name=f"{prefix}_{name}", create=create, size=nbytes if create else 0)
            self.segments[name] = seg
            self.arrays[name] = np.ndarray(shape, dtype=dtype, buffer=seg.buf)
            if create:
                self.arrays[name].reshape(-1)[:1] = 0  # tmpfs is zero-filled; touch nothing else

    def close(self) -> None:
        self.arrays.clear()  # drop numpy views before closing the buffers they point into
        for seg in self.segments.values():
            seg.close()

    def unlink(self) -> None:
        for seg in self.segments.values():
            try:
                seg.unlink()
            except FileNotFoundError:
                pass


class FileLock:
    """A cross-process mutex (flock); the kernel releases it if the holder dies."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)

    @contextmanager
    def held(self) -> Iterator[None]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


def slot_specs(sizes: ShmSizes) -> dict[str, tuple[tuple[int, ...], type]]:
    n, text_bytes, max_tokens = sizes.num_slots, sizes.text_bytes, sizes.prompt_speech_tokens
    return {
        "owner": ((n,), np.int64),  # req_id holding the slot; 0 = free
        "owner_pid": ((n,), np.int64),  # pid of the HTTP worker holding the slot
        "owner_rank": ((n,), np.int64),  # its rank: a restarted worker of that rank adopts the slot (adopt())
        "client": ((n,), np.int64),  # client_key() of the client address, for --max_requests_per_client
        "model": ((n,), np.int64),  # index of the request's model in ServerSettings.models (the HTTP worker's choice)
        "llm_rank": ((n,), np.int64),  # the LLM replica the encode process sent it to; -1 until then
        "decode_rank": ((n,), np.int64),  # the decode process its LLM gave it to; -1 until then
        "text_len": ((n,), np.int64),
        "text": ((n, text_bytes), np.uint8),  # tts_text, UTF-8
        "prompt_text_len": ((n,), np.int64),
        "prompt_text": ((n, text_bytes), np.uint8),  # the voice's transcript (empty: none)
        "instruct_text_len": ((n,), np.int64),
        "instruct_text": ((n, text_bytes), np.uint8),  # instruct mode's instruction
        "wav_len": ((n,), np.int64),
        "wav": ((n, sizes.wav_bytes), np.uint8),  # prompt audio file bytes as uploaded
        "source_wav_len": ((n,), np.int64),
        "source_wav": ((n, sizes.wav_bytes), np.uint8),  # voice conversion's source recording as uploaded
        # the LLM's prompt as the request's mode has it (the family's llm_prompt): its text tokens, and how many
        # of the prompt speech tokens it gets (all in zero-shot, none otherwise); the flow gets the whole prompt
        "num_prompt_text_tokens": ((n,), np.int64),
        "prompt_text_tokens": ((n, sizes.prompt_text_tokens), np.int32),
        "num_llm_prompt_speech_tokens": ((n,), np.int64),
        "num_prompt_speech_tokens": ((n,), np.int64),
        "prompt_speech_tokens": ((n, max_tokens), np.int32),
        "prompt_embedding": ((n, sizes.embedding_dim), np.float32),
        "prompt_mel": ((n, sizes.prompt_mel_frames, sizes.num_mels), np.float32),  # token_mel_ratio per token
        "audio": ((n, sizes.audio_ring_samples), np.int16),  # see AudioRing
        "audio_read": ((n,), np.int64),
        # usage reported to OpenAI clients, read by the HTTP worker after the last audio
        "usage_text_tokens": ((n,), np.int64),  # text tokens of tts_text (written by the encode process)
        "voice_kind": ((n,), np.int64),  # VOICE_KINDS index: how the encode process got the prompt's features
        "usage_speech_tokens": ((n,), np.int64),  # speech tokens decoded (written by the decode process)
        "trace": ((n, len(BOUNDARIES)), np.float64),  # when the first audio's path crossed each boundary (StageTrace)
    }


class RequestSlots:
    """`running_max_req_size` request slots; a slot index is what messages carry."""

    def __init__(self, sizes: ShmSizes, prefix: str, lock_path: str, create: bool = False):
        self.sizes = sizes
        self.shm = ShmArrays(f"{prefix}_slot", slot_specs(sizes), create)
        self.a = self.shm.arrays
        self.lock = FileLock(lock_path)
        self.num_slots = sizes.num_slots
        self.audio = AudioRing(self.a["audio"], self.a["audio_read"])
        self.trace = StageTrace(self.a["trace"])

    def claim(
        self, req_id: int, client: int = 0, client_limit: int = 0, http_rank: int = 0, model: int = 0
    ) -> int | None:
        """Take a free slot for `req_id` (a request to model index `model`); None when all are busy,
        CLIENT_AT_LIMIT when `client` already holds `client_limit` slots (0: no limit); the caller answers 429
        either way."""
        with self.lock.held():
            if client_limit and np.count_nonzero((self.a["client"] == client) & (self.a["owner"] != 0)) >= client_limit:
                return CLIENT_AT_LIMIT
            free = np.flatnonzero(self.a["owner"] == 0)
            if len(free) == 0:
                return None
            slot = int(free[0])
            self.a["owner"][slot] = req_id
            self.a["owner_pid"][slot] = os.getpid()
            self.a["owner_rank"][slot] = http_rank
            self.a["client"][slot] = client
            self.a["model"][slot] = model
            self.a["llm_rank"][slot] = self.a["decode_rank"][slot] = -1
        self.audio.reset(slot)
        self.trace.reset(slot)
        self.a["usage_text_tokens"][slot] = self.a["usage_speech_tokens"][slot] = self.a["voice_kind"][slot] = 0
        # no prompt until one is written: a model without prompt audio reads it empty, not the slot's last one's
        for column in ("num_prompt_text_tokens", "num_prompt_speech_tokens", "num_llm_prompt_speech_tokens"):
            self.a[column][slot] = 0
        return slot

    def release(self, slot: int, req_id: int) -> None:
        with self.lock.held():
            if self.a["owner"][slot] == req_id:
                self.a["owner"][slot] = 0
                self.a["owner_pid"][slot] = 0

    def adopt(self, http_rank: int) -> list[tuple[int, int]]:
        """(slot, req_id) of every slot held for `http_rank` by another process, now this process's.

        A restarted HTTP worker calls this before it claims anything: the slots are its dead predecessor's, whose
        requests the stages may still be working on, so the caller aborts them everywhere and frees each slot once
        every stage confirmed (a slot freed at once could be written by a stage into another request's audio).
        """
        with self.lock.held():
            theirs = np.flatnonzero(
                (self.a["owner"] != 0) & (self.a["owner_rank"] == http_rank) & (self.a["owner_pid"] != os.getpid())
            )
            self.a["owner_pid"][theirs] = os.getpid()
            return [(int(slot), int(self.a["owner"][slot])) for slot in theirs]

    def model_of(self, slot: int) -> int:
        return int(self.a["model"][slot])

    def set_llm_rank(self, slot: int, rank: int) -> None:
        self.a["llm_rank"][slot] = rank

    def llm_rank_of(self, slot: int) -> int:
        """The LLM replica holding the slot's request, -1 before the encode process sent it on."""
        return int(self.a["llm_rank"][slot])

    def set_decode_rank(self, slot: int, rank: int) -> None:
        self.a["decode_rank"][slot] = rank

    def decode_rank_of(self, slot: int) -> int:
        """The decode process holding the slot's request, -1 before its LLM gave it to one."""
        return int(self.a["decode_rank"][slot])

    def num_in_use(self) -> int:
        return int(np.count_nonzero(self.a["owner"]))

    def write_bytes(self, slot: int, name: str, data: bytes) -> None:
        buf = self.a[name][slot]
        if len(data) > len(buf):
            raise ValueError(f"{name} of {len(data)} bytes exceeds the slot's {len(buf)}")
        buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.a[f"{name}_len"][slot] = len(data)

    def read_bytes(self, slot: int, name: str) -> bytes:
        return self.a[name][slot, : int(self.a[f"{name}_len"][slot])].tobytes()

    def write_prompt(
        self, slot: int, text_tokens: Tokens, speech_tokens: Tokens, embedding: np.ndarray, mel: np.ndarray
    ) -> None:
        """Store the encoded prompt of a zero-shot request; raises ValueError if it does not fit the slot."""
        self.write_prompt_features(slot, speech_tokens, embedding, mel)
        self.write_llm_prompt(slot, text_tokens, uses_prompt_speech=True)

    def write_llm_prompt(self, slot: int, text_tokens: Tokens, uses_prompt_speech: bool) -> None:
        """The LLM's prompt in the request's mode: its text tokens, and whether it gets the prompt speech tokens
        (written after the prompt's features, whose speech tokens it then takes)."""
        a, num_text = self.a, len(text_tokens)
        if num_text > a["prompt_text_tokens"].shape[1]:
            raise ValueError(f"prompt of {num_text} text tokens does not fit the slot")
        a["prompt_text_tokens"][slot, :num_text] = text_tokens
        a["num_prompt_text_tokens"][slot] = num_text
        a["num_llm_prompt_speech_tokens"][slot] = a["num_prompt_speech_tokens"][slot] if uses_prompt_speech else 0

    def read_llm_prompt(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(text tokens [Lp], speech tokens [P or 0]) of the LLM's prompt, copied."""
        a = self.a
        num_text, num_speech = int(a["num_prompt_text_tokens"][slot]), int(a["num_llm_prompt_speech_tokens"][slot])
        return a["prompt_text_tokens"][slot, :num_text].copy(), a["prompt_speech_tokens"][slot, :num_speech].copy()

    def write_prompt_features(self, slot: int, speech_tokens: Tokens, embedding: np.ndarray, mel: np.ndarray) -> None:
        """The prompt's audio features (written by the encode process, or by the HTTP worker for a saved voice)."""
        a, num_speech, s = self.a, len(speech_tokens), self.sizes
        if num_speech > a["prompt_speech_tokens"].shape[1]:
            raise ValueError(f"prompt of {num_speech} speech tokens does not fit the slot")
        if mel.shape != (s.token_mel_ratio * num_speech, s.num_mels) or embedding.shape != (s.embedding_dim,):
            raise ValueError(f"prompt mel {mel.shape} / embedding {embedding.shape} have unexpected shapes")
        a["prompt_speech_tokens"][slot, :num_speech] = speech_tokens
        a["num_prompt_speech_tokens"][slot] = num_speech
        a["prompt_embedding"][slot] = embedding
        a["prompt_mel"][slot, : len(mel)] = mel

    def read_prompt(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(the LLM's text_tokens [Lp] int32, the prompt's speech_tokens [P] int32, embedding [E] f32, mel
        [ratio*P, mels] f32), copied: the flow's prompt (the text tokens are the LLM's, unused by the flow)."""
        a = self.a
        num_text, num_speech = int(a["num_prompt_text_tokens"][slot]), int(a["num_prompt_speech_tokens"][slot])
        num_frames = self.sizes.token_mel_ratio * num_speech
        return (
            a["prompt_text_tokens"][slot, :num_text].copy(),
            a["prompt_speech_tokens"][slot, :num_speech].copy(),
            a["prompt_embedding"][slot].copy(),
            a["prompt_mel"][slot, :num_frames].copy(),
        )

    def read_prompt_features(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(speech_tokens, embedding, mel) as read_prompt returns them, without the text tokens."""
        return self.read_prompt(slot)[1:]

    def close(self) -> None:
        self.shm.close()
        self.lock.close()
