"""Saved voices on disk: CRUD, restarts, several processes at once, limits, and what a failure leaves behind.
Real SQLite files and real processes (spawned, as the HTTP workers are separate processes)."""

import fcntl
import hashlib
import io
import multiprocessing
import os
import signal
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from light_tts.errors import AudioError, NotFoundError, RequestError, TooLargeError, VoiceLimitError
from light_tts.server.api.openai.schema import VoiceObject
from light_tts.server.api.voices.voice_store import PromptFeatures, VoiceStore
from light_tts.server.runtime.settings import VoiceLimits

LIMITS = VoiceLimits(max_voices=6, max_upload_bytes=200_000, max_text_chars=100)


def wav_bytes(seconds: float = 1.0, hz: float = 220.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * hz * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def features(seed: int = 0, num_tokens: int = 25) -> PromptFeatures:
    rng = np.random.default_rng(seed)
    return PromptFeatures(
        rng.integers(0, 6561, num_tokens).astype(np.int32),
        rng.standard_normal(192).astype(np.float32),
        rng.standard_normal((2 * num_tokens, 80)).astype(np.float32),
    )


def create_voices(data_dir: str, num: int, tag: str) -> tuple[list[str], int]:
    """Runs in a spawned process: try `num` creates; (ids created, number refused for the voice limit)."""
    store = VoiceStore(data_dir, LIMITS)
    created, refused = [], 0
    for k in range(num):
        try:
            # distinct audio per voice, so that every voice has its own key
            created.append(
                store.create(f"{tag}{k}", "hi", wav_bytes(hz=200 + 10 * k + 100 * int(tag[1:])), features(k), 1.0).id
            )
        except VoiceLimitError:
            refused += 1
    return created, refused


def list_ids(data_dir: str) -> list[str]:
    return [v.id for v in VoiceStore(data_dir, LIMITS).list()]


def create_blocked(data_dir: str) -> None:
    """Runs in a child that the test kills while it waits for the database lock, after writing the files."""
    VoiceStore(data_dir, LIMITS, busy_timeout_s=60).create("doomed", "hi", wav_bytes(), features(), 1.0)


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def files_in(store: VoiceStore) -> list[str]:
    return sorted(p.name for p in store.files_dir.iterdir())


@pytest.fixture
def db_write_lock():
    """Holds SQLite's write lock from another connection, as a busy writer in another process would."""
    held = []

    def hold(store: VoiceStore):
        db = sqlite3.connect(store.db_path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        held.append(db)
        return db

    yield hold
    for db in held:
        db.close()


def test_crud(tmp_path):
    store = VoiceStore(tmp_path, LIMITS)
    audio = wav_bytes(1.5)
    voice = store.create("Alice", "Hello there.", audio, features(1), 1.5)
    assert voice.id.startswith("voice_") and voice.duration_s == pytest.approx(1.5)
    assert voice.voice_key == hashlib.sha256(audio).hexdigest()
    from light_tts.frontend.frontend import voice_key

    assert voice.voice_key == voice_key(audio)  # the key the encode process's voice cache uses
    # the agreed wire shape (a saved voice has no `model`, which only a model's named voice carries)
    assert VoiceObject.of(voice).model_dump() == {
        "id": voice.id,
        "object": "voice",
        "name": "Alice",
        "text": "Hello there.",
        "duration_s": 1.5,
        "created_at": voice.created_at,
        "aliases": [],
    }
    assert store.get(voice.id) == voice and store.list() == [voice]
    prompt = store.load_features(voice.id)
    assert (prompt.voice_key, prompt.text) == (voice.voice_key, "Hello there.")
    for name in ("speech_tokens", "embedding", "mel"):
        got, want = getattr(prompt.features, name), getattr(features(1), name)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert store.load_audio(voice.id) == audio

    store.delete(voice.id)
    assert store.list() == [] and files_in(store) == []
    for call in (store.get, store.load_features, store.load_audio, store.delete):
        with pytest.raises(NotFoundError) as e:
            call(voice.id)
        assert e.value.http_status == 404


def test_ids_cannot_name_other_paths(tmp_path):
    store = VoiceStore(tmp_path, LIMITS)
    for bad in ("../voices", "voice_../../x", "voice_a/b", ""):
        with pytest.raises(NotFoundError):
            store.load_features(bad)


def test_voices_survive_a_restart(tmp_path):
    first = VoiceStore(tmp_path, LIMITS)
    made = [first.create(f"v{k}", "hi", wav_bytes(hz=300 + k), features(k), 1.0) for k in range(2)]
    reopened = VoiceStore(tmp_path, LIMITS)
    assert reopened.list() == made
    np.testing.assert_array_equal(reopened.load_features(made[1].id).features.mel, features(1).mel)


def test_two_processes_see_the_same_voices(tmp_path, pool):
    store = VoiceStore(tmp_path, LIMITS)
    mine = store.create("parent", "hi", wav_bytes(), features(), 1.0).id
    (theirs,), _ = pool.submit(create_voices, str(tmp_path), 1, "p1").result()
    assert sorted(pool.submit(list_ids, str(tmp_path)).result()) == sorted([mine, theirs])
    assert sorted(v.id for v in store.list()) == sorted([mine, theirs])


def test_concurrent_creates_keep_the_limit(tmp_path, pool):
    store = VoiceStore(tmp_path, LIMITS)
    results = [f.result() for f in [pool.submit(create_voices, str(tmp_path), 4, f"w{k}") for k in range(3)]]
    created = [vid for ids, _ in results for vid in ids]
    assert len(created) == LIMITS.max_voices and sum(refused for _, refused in results) == 12 - LIMITS.max_voices
    assert sorted(v.id for v in store.list()) == sorted(created)
    # the refused creates removed what they had written
    assert files_in(store) == sorted(f"{vid}.{ext}" for vid in created for ext in ("audio", "npz"))


def test_limits_give_typed_errors_and_write_nothing(tmp_path):
    store = VoiceStore(tmp_path, LIMITS)
    cases = [
        (dict(audio=b"\x00" * (LIMITS.max_upload_bytes + 1)), TooLargeError, 413),
        (dict(audio=b""), AudioError, 400),  # whether other bytes are audio is the encode process's verdict
        (dict(name="  "), RequestError, 400),
        (dict(text="x" * (LIMITS.max_text_chars + 1)), RequestError, 400),
        (dict(text=" \n"), RequestError, 400),  # blank: leave the field out for a voice without a transcript
    ]
    for overrides, error, status in cases:
        args = {"name": "n", "text": "t", "audio": wav_bytes(), **overrides}
        with pytest.raises(error) as e:
            store.create(args["name"], args["text"], args["audio"], features(), 1.0)
        assert e.value.http_status == status
    with pytest.raises(ValueError, match="wrong shape"):
        store.create("n", "t", wav_bytes(), PromptFeatures(*[np.zeros(3, np.int32)] * 3), 1.0)
    assert store.list() == [] and files_in(store) == []

    for k in range(LIMITS.max_voices):
        store.create(f"v{k}", "t", wav_bytes(hz=200 + k), features(k), 1.0)
    with pytest.raises(VoiceLimitError) as e:
        store.check_upload("one more", "t", wav_bytes())
    assert (e.value.http_status, e.value.kind) == (409, "too_many_voices")


def test_failed_commit_leaves_no_half_voice(tmp_path, db_write_lock):
    store = VoiceStore(tmp_path, LIMITS, busy_timeout_s=0.05)
    db_write_lock(store)  # the insert cannot get the lock: the files were written, the row never is
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.create("n", "t", wav_bytes(), features(), 1.0)
    assert files_in(store) == []


def test_a_crash_mid_create_leaves_orphans_that_the_sweep_removes(tmp_path, db_write_lock):
    store = VoiceStore(tmp_path, LIMITS)
    db = db_write_lock(store)
    child = multiprocessing.get_context("spawn").Process(target=create_blocked, args=(str(tmp_path),))
    child.start()
    deadline = time.monotonic() + 60
    while not any(name.endswith(".npz") for name in files_in(store)):  # both files are in place
        assert child.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    db.execute("ROLLBACK")
    orphans = files_in(store)
    assert len(orphans) == 2 and store.list() == []

    with store._held(fcntl.LOCK_SH):  # a create in progress elsewhere: the sweep must leave its files alone
        assert store.sweep_orphans() == 0 and files_in(store) == orphans
    VoiceStore(tmp_path, LIMITS)  # a restart sweeps
    assert files_in(store) == []


def test_a_voice_deleted_mid_use_still_serves_the_request_that_loaded_it(tmp_path):
    store = VoiceStore(tmp_path, LIMITS)
    voice = store.create("n", "t", wav_bytes(), features(3), 1.0)
    in_flight = store.load_features(voice.id)
    store.delete(voice.id)
    np.testing.assert_array_equal(in_flight.features.speech_tokens, features(3).speech_tokens)
    np.testing.assert_array_equal(in_flight.features.mel, features(3).mel)
    with pytest.raises(NotFoundError):
        store.load_features(voice.id)


def test_features_of_another_frontend_come_back_as_the_audio(tmp_path):
    """A saved voice is keyed by the frontend that computed its features: a model of another frontend gets the
    stored audio (its features are computed again), one of the same frontend the features."""
    store = VoiceStore(tmp_path, LIMITS)
    audio = wav_bytes()
    voice = store.create("v", "a text", audio, features(), 1.0, frontend_key="front-1")
    same = store.load_features(voice.id, "front-1")
    assert same.features is not None and same.audio is None and same.text == "a text"
    other = store.load_features(voice.id, "front-2")
    assert other.features is None and other.audio == audio and other.voice_key == voice.voice_key


def test_a_version_1_store_is_migrated(tmp_path):
    db = sqlite3.connect(tmp_path / "voices.sqlite3")
    db.execute(
        "CREATE TABLE voices (id TEXT PRIMARY KEY, name TEXT NOT NULL, text TEXT NOT NULL, "
        "duration_s REAL NOT NULL, created_at INTEGER NOT NULL, voice_key TEXT NOT NULL)"
    )
    db.execute("INSERT INTO voices VALUES ('voice_ab12', 'old', 't', 1.0, 0, 'k')")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = VoiceStore(tmp_path, LIMITS)
    old = store.get("voice_ab12")
    assert old.frontend_key == ""  # unknown: every model recomputes its features from the audio


def test_a_voices_features_are_read_from_disk_once_and_shared_read_only(tmp_path):
    store = VoiceStore(tmp_path, LIMITS)
    voice = store.create("n", "t", wav_bytes(), features(4), 1.0)
    first = store.load_features(voice.id)
    (tmp_path / "voices" / f"{voice.id}.npz").unlink()  # gone from disk: the next request needs no read
    again = store.load_features(voice.id)
    assert again.features is first.features and not again.features.mel.flags.writeable
    store.delete(voice.id)
    with pytest.raises(NotFoundError):  # the row lookup still decides whether the voice exists
        store.load_features(voice.id)


def test_a_voice_without_a_transcript(tmp_path):
    """Saved with no text: listed with text '' (the API shows null) and loaded with none, for cross-lingual; a
    voice stored with an empty transcript before blanks were refused reads the same."""
    store = VoiceStore(tmp_path, LIMITS)
    voice = store.create("no text", None, wav_bytes(), features(), 1.0)
    assert store.get(voice.id).text == "" and store.load_features(voice.id).text is None
    assert store.load_features(store.create("text", "Hi.", wav_bytes(hz=300), features(), 1.0).id).text == "Hi."


def test_aliases_name_voices_by_id_or_newest_name_and_a_404_lists_what_exists(tmp_path):
    """--voice_alias: alloy -> an id, nova -> a name (the newest voice of that name); unknown names and aliases
    whose voice is gone get a 404 that names the saved voices and the aliases."""
    plain = VoiceStore(tmp_path, LIMITS)
    old = plain.create("narrator", "hi", wav_bytes(hz=200), features(1), 1.0)
    alice = plain.create("Alice", "hi", wav_bytes(hz=300), features(2), 1.0)
    store = VoiceStore(tmp_path, LIMITS, aliases={"alloy": alice.id, "nova": "narrator", "echo": "voice_gone"})
    assert store.find("alloy") == alice and store.find("nova") == old and store.find(alice.id) == alice
    assert store.load_features("alloy").features.embedding.tolist() == features(2).embedding.tolist()
    new = store.create("narrator", "hi", wav_bytes(hz=400), features(3), 1.0)
    assert store.find("nova") == new  # a new upload of the name takes the alias over
    assert store.aliases_of(store.list()) == {alice.id: ["alloy"], new.id: ["nova"]}
    with pytest.raises(NotFoundError) as e:
        store.find("shimmer")
    message = str(e.value)
    assert message.startswith("voice 'shimmer' not found; saved voices: ") and e.value.param == "voice"
    assert all(f"{v.id} ({v.name})" in message for v in (old, alice, new))
    assert "aliases: alloy -> voice_" in message and "nova -> narrator" in message
    with pytest.raises(NotFoundError, match="'echo' is an alias of 'voice_gone', which is no saved voice"):
        store.find("echo")
    with pytest.raises(NotFoundError, match="no aliases .* --voice_alias alloy=VOICE"):
        plain.find("alloy")  # a server without aliases says how to make one
    with pytest.raises(NotFoundError, match="no saved voices"):
        VoiceStore(tmp_path / "empty", LIMITS).find("alloy")


def test_voice_alias_flag_is_parsed_and_checked():
    from light_tts.server.runtime.config import ServerConfig

    cfg = ServerConfig.from_args(["--voice_alias", "alloy=voice_ab12", "--voice_alias", "nova = narrator"])
    assert cfg.voice_aliases() == {"alloy": "voice_ab12", "nova": "narrator"}
    for bad in (["alloy"], ["=voice_x"], ["voice_x=y"], ["a=b", "a=c"]):
        with pytest.raises(SystemExit):
            ServerConfig.from_args([arg for spec in bad for arg in ("--voice_alias", spec)])
