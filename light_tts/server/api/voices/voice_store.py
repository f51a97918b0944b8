"""Saved voices: a prompt recording and its transcript (or none), uploaded once with its prompt features computed
then, kept under --data_dir so that they survive restarts and every HTTP worker process sees the same set. The
features serve every mode (zero-shot, instruct, cross-lingual, and as voice conversion's target): they depend on
the audio only, so no mode computes them again. A voice without a transcript (text '' in the row) is spoken
cross-lingual.

    data_dir/voices.sqlite3      one row per voice (with the frontend_key of the model whose frontend computed its
                                 features: a model of another frontend recomputes them from the audio); WAL, so
                                 readers never wait for the (rare) writer
    data_dir/voices/<id>.audio   the upload as sent
    data_dir/voices/<id>.npz     speech_tokens int32 [P], embedding float32 [192], mel float32 [2P, 80]
    data_dir/voices.lock         flock: every create holds it shared, the orphan sweep exclusive

Aliases (--voice_alias NAME=VOICE, voice_aliases.py) let requests name a voice as OpenAI clients do (`alloy`).

A voice exists iff its row does. Create writes both files under temporary names, renames them into place
(os.replace is atomic) and commits the row last; delete removes the row first. So a crash or a failed
upload leaves at most files without a row, which the sweep removes when a store opens. A request that
loaded a voice's features keeps them even if the voice is deleted a moment later; later lookups get 404.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from light_tts.errors import AudioError, NotFoundError, RequestError, TooLargeError, VoiceLimitError
from light_tts.request_rules import VOICE_ID_PREFIX, describe_bytes
from light_tts.server.api.voices.voice_aliases import VoiceAliases
from light_tts.server.runtime.settings import VoiceLimits

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    duration_s REAL NOT NULL,
    created_at INTEGER NOT NULL,
    voice_key TEXT NOT NULL,
    frontend_key TEXT NOT NULL DEFAULT ''
)"""
# version 1 -> 2: the frontend that computed the features ('' for older voices: unknown, so always recomputed)
MIGRATE_1_TO_2 = "ALTER TABLE voices ADD COLUMN frontend_key TEXT NOT NULL DEFAULT ''"
COLUMNS = "id, name, text, duration_s, created_at, voice_key, frontend_key"
ID_PREFIX = VOICE_ID_PREFIX
TMP_PREFIX = ".tmp-"
MAX_NAME_CHARS = 256


FEATURES_CACHED = 256  # saved voices whose features an HTTP worker keeps in memory (~0.1 MB each for 5 s)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # shared by every request of the voice
    return array


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    text: str  # the transcript of the recording: the prompt text ('' for a voice without one)
    duration_s: float
    created_at: int  # unix seconds
    voice_key: str  # hex sha256 of the audio bytes (with the frontend key: the voice cache's key)
    frontend_key: str = ""  # model_set frontend_key of the model whose frontend computed the features


@dataclass(frozen=True)
class PromptFeatures:
    """What the encode process computes from the prompt audio (the same arrays the voice cache holds)."""

    speech_tokens: np.ndarray  # int32 [P], 25 Hz
    embedding: np.ndarray  # float32 [E], CAM++ speaker embedding (192)
    mel: np.ndarray  # float32 [ratio*P, mels], 24 kHz prompt mel ([2P, 80])

    def check(self) -> None:
        """Types and the shapes' relations; the model's exact sizes are checked where a request's slot takes them."""
        num = len(self.speech_tokens)
        if (
            self.speech_tokens.dtype != np.int32
            or self.speech_tokens.ndim != 1
            or num == 0
            or self.embedding.dtype != np.float32
            or self.embedding.ndim != 1
            or self.mel.dtype != np.float32
            or self.mel.ndim != 2
            or self.mel.shape[0] % num
            or self.mel.shape[0] == 0
        ):
            raise ValueError(
                f"prompt features of the wrong shape: tokens {self.speech_tokens.dtype}"
                f"{self.speech_tokens.shape}, embedding {self.embedding.dtype}{self.embedding.shape}, "
                f"mel {self.mel.dtype}{self.mel.shape}"
            )


@dataclass(frozen=True)
class VoicePrompt:
    """A saved voice as a request uses it: in memory, independent of the files from then on."""

    voice_key: str
    text: str | None  # the transcript; None: the voice has none (spoken cross-lingual)
    features: PromptFeatures | None  # None: another frontend computed them; `audio` is the prompt then
    audio: bytes | None = None


class VoiceStore:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        limits: VoiceLimits,
        busy_timeout_s: float = 10.0,
        aliases: dict[str, str] | None = None,
    ):
        self.limits = limits
        # features read recently, by the voice's audio and frontend keys (a voice's files never change; the row
        # lookup before each use still sees a delete): a request reuses them instead of reading its npz again
        self.features_cache: OrderedDict[tuple[str, str], PromptFeatures] = OrderedDict()
        self.cache_lock = threading.Lock()  # load_features runs in the thread pool
        self.aliases = VoiceAliases(aliases)
        self.busy_timeout_s = busy_timeout_s
        self.root = Path(data_dir)
        self.files_dir = self.root / "voices"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "voices.sqlite3"
        self.lock_path = self.root / "voices.lock"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file, for every process
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # a new or older file
                db.execute("BEGIN IMMEDIATE")
                version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have just done it
                if version == 0:
                    db.execute(SCHEMA)
                elif version == 1:
                    db.execute(MIGRATE_1_TO_2)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise RuntimeError(f"{self.db_path} has schema version {version}; this server reads {SCHEMA_VERSION}")
        self.sweep_orphans()

    # ---- queries

    def list(self) -> list[Voice]:
        with self._connect() as db:
            return [Voice(*row) for row in db.execute(f"SELECT {COLUMNS} FROM voices ORDER BY rowid")]

    def get(self, voice_id: str) -> Voice:
        with self._connect() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM voices WHERE id = ?", (voice_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"voice {voice_id!r} not found")
        return Voice(*row)

    def find(self, voice: str) -> Voice:
        """The voice a request names: an id, or an alias of an id or a name; else a 404 that says what exists."""
        target, may_be_name = self.aliases.target(voice)
        with self._connect() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM voices WHERE id = ?", (target,)).fetchone()
            if row is None and may_be_name:
                row = db.execute(
                    f"SELECT {COLUMNS} FROM voices WHERE name = ? ORDER BY rowid DESC LIMIT 1", (target,)
                ).fetchone()
        if row is None:
            raise self.aliases.not_found(voice, self.list())
        return Voice(*row)

    def aliases_of(self, voices: list[Voice]) -> dict[str, list[str]]:
        """voice id -> the aliases that name it now."""
        return self.aliases.named(voices)

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM voices").fetchone()[0]

    def load_features(self, voice_name: str, frontend_key: str = "") -> VoicePrompt:
        """Everything a request to a model of frontend `frontend_key` needs, read into memory now; a later delete
        does not take it away. Features another frontend computed do not fit that model: then the prompt is the
        stored audio, whose features the encode process computes (and caches) for it. `voice_name` is an id or an
        alias (find)."""
        voice = self.find(voice_name)
        voice_id, text = voice.id, voice.text or None
        if frontend_key and voice.frontend_key != frontend_key:
            return VoicePrompt(voice.voice_key, text, None, self.load_audio(voice_id))
        key = (voice.voice_key, voice.frontend_key)  # the audio and the frontend that computed its features
        with self.cache_lock:
            features = self.features_cache.get(key)
            if features is not None:
                self.features_cache.move_to_end(key)
                return VoicePrompt(voice.voice_key, text, features)
        try:
            with np.load(self._path(voice_id, "npz"), allow_pickle=False) as npz:
                features = PromptFeatures(*(_read_only(npz[k]) for k in ("speech_tokens", "embedding", "mel")))
        except FileNotFoundError:  # deleted between the row lookup and the read
            raise NotFoundError(f"voice {voice_id!r} not found") from None
        with self.cache_lock:
            self.features_cache[key] = features
            while len(self.features_cache) > FEATURES_CACHED:
                self.features_cache.popitem(last=False)
        return VoicePrompt(voice.voice_key, text, features)

    def load_audio(self, voice_id: str) -> bytes:
        """The upload as sent (to recompute features, e.g. for another model)."""
        self.get(voice_id)
        try:
            return self._path(voice_id, "audio").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"voice {voice_id!r} not found") from None

    # ---- changes

    def check_upload(self, name: str, text: str | None, audio: bytes) -> None:
        """Cheap checks before the features are computed (decoding the audio is the encode process's job). `text`
        None: a voice without a transcript; a blank one is refused (it would say nothing the absent field does not,
        and is more likely a client's mistake)."""
        if not name.strip() or len(name) > MAX_NAME_CHARS:
            raise RequestError(f"name must be 1..{MAX_NAME_CHARS} characters, got {len(name.strip())}")
        if text is not None and not text.strip():
            raise RequestError(
                "text is blank: leave the field out for a voice without a transcript (it is then "
                "spoken in mode cross_lingual)"
            )
        text = text or ""
        if len(text) > self.limits.max_text_chars or "\x00" in text or "\x00" in name:
            raise RequestError(f"text must be at most {self.limits.max_text_chars} characters, without NUL")
        if not audio:
            raise AudioError("audio is empty (0 bytes)")
        if len(audio) > self.limits.max_upload_bytes:
            raise TooLargeError(
                f"audio is {describe_bytes(len(audio))}; the limit is "
                f"{describe_bytes(self.limits.max_upload_bytes)} (--max_prompt_wav_bytes)",
                "audio",
            )
        if self.count() >= self.limits.max_voices:
            raise VoiceLimitError(f"the server keeps at most {self.limits.max_voices} voices; delete one first")

    def create(
        self,
        name: str,
        text: str | None,
        audio: bytes,
        features: PromptFeatures,
        duration_s: float,
        frontend_key: str = "",
    ) -> Voice:
        """Save a voice whose features (and the audio's duration) the encode process computed with the frontend
        of `frontend_key`; `text` None: it has no transcript."""
        self.check_upload(name, text, audio)
        text = text or ""
        features.check()
        # The key is the frontend's voice_key(audio): requests that upload the same bytes share the cache entry.
        voice_key = hashlib.sha256(audio).hexdigest()
        voice = Voice(
            ID_PREFIX + secrets.token_hex(12), name, text, duration_s, int(time.time()), voice_key, frontend_key
        )
        buf = io.BytesIO()
        np.savez(buf, speech_tokens=features.speech_tokens, embedding=features.embedding, mel=features.mel)
        with self._held(fcntl.LOCK_SH):  # keeps the sweep from taking our files before the row exists
            try:
                self._write_atomically(self._path(voice.id, "audio"), audio)
                self._write_atomically(self._path(voice.id, "npz"), buf.getvalue())
                with self._connect() as db:
                    db.execute("BEGIN IMMEDIATE")  # the count and the insert see the same table
                    if db.execute("SELECT COUNT(*) FROM voices").fetchone()[0] >= self.limits.max_voices:
                        raise VoiceLimitError(f"the server keeps at most {self.limits.max_voices} voices")
                    db.execute(
                        f"INSERT INTO voices ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            voice.id,
                            voice.name,
                            voice.text,
                            voice.duration_s,
                            voice.created_at,
                            voice.voice_key,
                            voice.frontend_key,
                        ),
                    )
                    db.execute("COMMIT")
            except BaseException:
                self._remove_files(voice.id)
                raise
        return voice

    def delete(self, voice_id: str) -> None:
        with self._connect() as db:
            deleted = db.execute("DELETE FROM voices WHERE id = ?", (voice_id,)).rowcount
        if not deleted:
            raise NotFoundError(f"voice {voice_id!r} not found")
        self._remove_files(voice_id)  # a crash before this leaves orphans for the sweep

    def sweep_orphans(self) -> int:
        """Remove files no row refers to; skipped (returns 0) while another process is creating a voice."""
        with self._held(fcntl.LOCK_EX | fcntl.LOCK_NB) as is_held:
            if not is_held:
                return 0
            with self._connect() as db:
                known = {row[0] for row in db.execute("SELECT id FROM voices")}
            num_removed = 0
            for path in self.files_dir.iterdir():
                is_orphan = path.name.startswith(ID_PREFIX) and path.name.split(".")[0] not in known
                if is_orphan or path.name.startswith(TMP_PREFIX):
                    path.unlink(missing_ok=True)
                    num_removed += 1
            return num_removed

    # ---- plumbing

    @contextmanager
    def _connect(self):
        """A connection per operation: safe from any thread, and nothing to share across fork()."""
        db = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @contextmanager
    def _held(self, mode: int):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _path(self, voice_id: str, ext: str) -> Path:
        if not voice_id.startswith(ID_PREFIX) or not voice_id[len(ID_PREFIX) :].isalnum():
            raise NotFoundError(f"voice {voice_id!r} not found")  # also keeps ids from naming other paths
        return self.files_dir / f"{voice_id}.{ext}"

    def _write_atomically(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(self.files_dir, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _remove_files(self, voice_id: str) -> None:
        for ext in ("audio", "npz"):
            self._path(voice_id, ext).unlink(missing_ok=True)
