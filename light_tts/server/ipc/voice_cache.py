"""Shared-memory LRU cache of prompt audio features, keyed by the audio's content.

Keys are voice_cache_key(frontend_key, audio key): models with the same frontend files (speech tokenizer, speaker
model, text tokenizer) share entries, models with other frontends have their own. A repeated voice skips the
speech tokenizer and the speaker model whichever HTTP worker and encode process the request went through.
Entries hold what depends on the audio only (speech tokens, speaker embedding, prompt mel); prompt text tokens
are recomputed, since the same voice may come with another transcript.
"""

from __future__ import annotations

import hashlib

import numpy as np

from light_tts.server.ipc.shm import FileLock, ShmArrays
from light_tts.server.runtime.settings import ShmSizes

KEY_BYTES = 32  # sha256 of the frontend's voice key


def voice_cache_key(frontend_key: str, audio_key: str) -> str:
    """The key of a prompt's features as one frontend computes them: the voice cache's key and, downstream, the
    prefix key under which the LLM and the decode engine share a voice's prompt state."""
    return hashlib.sha256(f"{frontend_key}:{audio_key}".encode()).hexdigest()


def cache_specs(sizes: ShmSizes) -> dict[str, tuple[tuple[int, ...], type]]:
    n, max_tokens = sizes.cache_capacity, sizes.prompt_speech_tokens
    return {
        "key": ((n, KEY_BYTES), np.uint8),
        "is_valid": ((n,), np.bool_),
        "last_used": ((n,), np.int64),  # value of `clock` at the last hit or insert; smallest = evicted first
        "clock": ((1,), np.int64),
        "num_tokens": ((n,), np.int64),
        "speech_tokens": ((n, max_tokens), np.int32),
        "embedding": ((n, sizes.embedding_dim), np.float32),
        "mel": ((n, sizes.prompt_mel_frames, sizes.num_mels), np.float32),
    }


class VoiceCache:
    def __init__(self, sizes: ShmSizes, prefix: str, lock_path: str, create: bool = False):
        self.sizes = sizes
        self.shm = ShmArrays(f"{prefix}_voice", cache_specs(sizes), create)
        self.a = self.shm.arrays
        self.lock = FileLock(lock_path)

    @staticmethod
    def _digest(voice_key: str) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(voice_key.encode()).digest(), dtype=np.uint8)

    def _find(self, digest: np.ndarray) -> int | None:
        matches = np.flatnonzero(self.a["is_valid"] & (self.a["key"] == digest).all(axis=1))
        return int(matches[0]) if len(matches) else None

    def _tick(self, entry: int) -> None:
        self.a["clock"][0] += 1
        self.a["last_used"][entry] = self.a["clock"][0]

    def get(self, voice_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(speech_tokens [P] int32, embedding [E] f32, mel [ratio*P, mels] f32), copies; None on a miss."""
        with self.lock.held():
            entry = self._find(self._digest(voice_key))
            if entry is None:
                return None
            self._tick(entry)
            num = int(self.a["num_tokens"][entry])
            return (
                self.a["speech_tokens"][entry, :num].copy(),
                self.a["embedding"][entry].copy(),
                self.a["mel"][entry, : self.sizes.token_mel_ratio * num].copy(),
            )

    def put(self, voice_key: str, speech_tokens: np.ndarray, embedding: np.ndarray, mel: np.ndarray) -> None:
        num = len(speech_tokens)
        expected_mel = (self.sizes.token_mel_ratio * num, self.sizes.num_mels)
        if num > self.a["speech_tokens"].shape[1] or mel.shape != expected_mel:
            raise ValueError(f"voice of {num} tokens / mel {mel.shape} does not fit the cache entries")
        digest = self._digest(voice_key)
        with self.lock.held():
            entry = self._find(digest)
            if entry is None:
                free = np.flatnonzero(~self.a["is_valid"])
                entry = int(free[0]) if len(free) else int(np.argmin(self.a["last_used"]))
            # Invalidate first: a reader never sees a half-written entry under its old key.
            self.a["is_valid"][entry] = False
            self.a["key"][entry] = digest
            self.a["num_tokens"][entry] = num
            self.a["speech_tokens"][entry, :num] = speech_tokens
            self.a["embedding"][entry] = embedding
            self.a["mel"][entry, : len(mel)] = mel
            self.a["is_valid"][entry] = True
            self._tick(entry)

    def num_entries(self) -> int:
        return int(self.a["is_valid"].sum())

    def close(self) -> None:
        self.shm.close()
        self.lock.close()
