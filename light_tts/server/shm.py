"""Shared-memory state: request slots (inputs, prompt features, audio ring) and the process table.

The launcher creates every segment once and unlinks it at exit; workers attach by name. Segments are
sparse tmpfs files, so only the bytes actually written take memory.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from multiprocessing import shared_memory

import numpy as np

from light_tts.server.config import ServerConfig

EMBEDDING_DIM = 192  # CAM++ speaker embedding
NUM_MELS = 80
AUDIO_RING_SAMPLES = 24000 * 60  # int16 samples per slot; a reader more than a minute behind gets inline audio


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
    def held(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


def slot_specs(cfg: ServerConfig) -> dict[str, tuple[tuple[int, ...], type]]:
    n, text_bytes, max_tokens = cfg.running_max_req_size, 4 * cfg.max_text_chars, cfg.max_prompt_tokens
    return {
        "owner": ((n,), np.int64),  # req_id holding the slot; 0 = free
        "owner_pid": ((n,), np.int64),  # HTTP worker pid, to reclaim slots of a dead worker
        "text_len": ((n,), np.int64),
        "text": ((n, text_bytes), np.uint8),  # tts_text, UTF-8
        "prompt_text_len": ((n,), np.int64),
        "prompt_text": ((n, text_bytes), np.uint8),
        "wav_len": ((n,), np.int64),
        "wav": ((n, cfg.max_prompt_wav_bytes), np.uint8),  # prompt audio file bytes as uploaded
        "num_prompt_text_tokens": ((n,), np.int64),
        "prompt_text_tokens": ((n, cfg.max_text_chars), np.int32),
        "num_prompt_speech_tokens": ((n,), np.int64),
        "prompt_speech_tokens": ((n, max_tokens), np.int32),
        "prompt_embedding": ((n, EMBEDDING_DIM), np.float32),
        "prompt_mel": ((n, 2 * max_tokens, NUM_MELS), np.float32),  # 2 mel frames per speech token
        "audio": ((n, AUDIO_RING_SAMPLES), np.int16),  # decode writes at written % ring, HTTP reads
        "audio_read": ((n,), np.int64),  # samples the HTTP worker has consumed
    }


def process_specs(num_rows: int) -> dict[str, tuple[tuple[int, ...], type]]:
    return {"pid": ((num_rows,), np.int64), "state": ((num_rows,), np.int64), "load": ((num_rows,), np.int64)}


class RequestSlots:
    """`running_max_req_size` request slots; a slot index is what messages carry."""

    def __init__(self, cfg: ServerConfig, prefix: str, lock_path: str, create: bool = False):
        self.shm = ShmArrays(f"{prefix}_slot", slot_specs(cfg), create)
        self.a = self.shm.arrays
        self.lock = FileLock(lock_path)
        self.num_slots = cfg.running_max_req_size

    def claim(self, req_id: int) -> int | None:
        """Take a free slot for `req_id`; None when all are busy (the caller answers 429)."""
        with self.lock.held():
            free = np.flatnonzero(self.a["owner"] == 0)
            if len(free) == 0:
                return None
            slot = int(free[0])
            self.a["owner"][slot] = req_id
            self.a["owner_pid"][slot] = os.getpid()
        self.a["audio_read"][slot] = 0
        return slot

    def release(self, slot: int, req_id: int) -> None:
        with self.lock.held():
            if self.a["owner"][slot] == req_id:
                self.a["owner"][slot] = 0
                self.a["owner_pid"][slot] = 0

    def release_all_of(self, pid: int) -> int:
        """Free the slots of a dead HTTP worker; returns how many."""
        with self.lock.held():
            mine = self.a["owner_pid"] == pid
            self.a["owner"][mine] = 0
            self.a["owner_pid"][mine] = 0
            return int(mine.sum())

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

    def write_prompt(self, slot: int, text_tokens, speech_tokens, embedding, mel) -> None:
        """Store the encoded prompt; raises ValueError if it does not fit the slot's arrays."""
        a, num_text, num_speech = self.a, len(text_tokens), len(speech_tokens)
        if num_text > a["prompt_text_tokens"].shape[1] or num_speech > a["prompt_speech_tokens"].shape[1]:
            raise ValueError(f"prompt of {num_text} text / {num_speech} speech tokens does not fit the slot")
        if mel.shape != (2 * num_speech, NUM_MELS) or embedding.shape != (EMBEDDING_DIM,):
            raise ValueError(f"prompt mel {mel.shape} / embedding {embedding.shape} have unexpected shapes")
        a["prompt_text_tokens"][slot, :num_text] = text_tokens
        a["num_prompt_text_tokens"][slot] = num_text
        a["prompt_speech_tokens"][slot, :num_speech] = speech_tokens
        a["num_prompt_speech_tokens"][slot] = num_speech
        a["prompt_embedding"][slot] = embedding
        a["prompt_mel"][slot, : 2 * num_speech] = mel

    def read_prompt(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(text_tokens [Lp] int32, speech_tokens [P] int32, embedding [192] f32, mel [2P, 80] f32), copied."""
        a = self.a
        num_text, num_speech = int(a["num_prompt_text_tokens"][slot]), int(a["num_prompt_speech_tokens"][slot])
        return (a["prompt_text_tokens"][slot, :num_text].copy(), a["prompt_speech_tokens"][slot, :num_speech].copy(),
                a["prompt_embedding"][slot].copy(), a["prompt_mel"][slot, : 2 * num_speech].copy())

    def close(self) -> None:
        self.shm.close()
        self.lock.close()


class ProcessTable:
    """One row per worker process: pid, state and load, read by readiness checks and the LLM's dispatcher."""

    STARTING, READY, DEAD = 0, 1, 2

    def __init__(self, cfg: ServerConfig, prefix: str, create: bool = False):
        self.rows: dict[tuple[str, int], int] = {}
        counts = (("encode", cfg.encode_process_num), ("llm", 1), ("decode", cfg.decode_process_num),
                  ("http", cfg.httpserver_workers))
        for stage, count in counts:
            for rank in range(count):
                self.rows[(stage, rank)] = len(self.rows)
        self.shm = ShmArrays(f"{prefix}_procs", process_specs(len(self.rows)), create)
        self.a = self.shm.arrays

    def set(self, stage: str, rank: int, *, pid: int | None = None, state: int | None = None) -> None:
        row = self.rows[(stage, rank)]
        if pid is not None:
            self.a["pid"][row] = pid
        if state is not None:
            self.a["state"][row] = state

    def set_load(self, stage: str, rank: int, load: int) -> None:
        self.a["load"][self.rows[(stage, rank)]] = load

    def load(self, stage: str, rank: int) -> int:
        return int(self.a["load"][self.rows[(stage, rank)]])

    def state(self, stage: str, rank: int) -> int:
        return int(self.a["state"][self.rows[(stage, rank)]])

    def backend_states(self) -> dict[tuple[str, int], int]:
        return {key: int(self.a["state"][row]) for key, row in self.rows.items() if key[0] != "http"}

    def all_backends_ready(self) -> bool:
        return all(state == self.READY for state in self.backend_states().values())

    def claim_row(self, stage: str, pid: int, lock: FileLock) -> tuple[int, int]:
        """Give `pid` a row of `stage` that is free or whose process is gone (a restarted gunicorn worker);
        returns (rank, pid of the previous holder or 0)."""
        with lock.held():
            for (row_stage, rank), row in self.rows.items():
                previous = int(self.a["pid"][row])
                if row_stage == stage and (previous == 0 or not _is_alive(previous)):
                    self.a["pid"][row], self.a["state"][row] = pid, self.STARTING
                    return rank, previous
        raise RuntimeError(f"every {stage} row is held by a live process")

    def describe(self) -> dict[str, dict]:
        """{"decode0": {"pid": ..., "state": "ready"}, ...} for /readiness."""
        names = {self.STARTING: "starting", self.READY: "ready", self.DEAD: "dead"}
        return {f"{stage}{rank}": {"pid": int(self.a["pid"][row]), "state": names[int(self.a["state"][row])]}
                for (stage, rank), row in self.rows.items()}

    def dead_backends(self) -> list[tuple[str, int]]:
        return [key for key, state in self.backend_states().items() if state == self.DEAD]

    def close(self) -> None:
        self.shm.close()


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
