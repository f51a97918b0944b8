"""Unit tests of the server's plumbing: config parsing, endpoints, shared-memory slots, voice cache, audio ring."""

import dataclasses
import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from light_tts.errors import TooLargeError
from light_tts.model_config import ModelConfig
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.ipc.shm import RequestSlots
from light_tts.server.ipc.voice_cache import VoiceCache
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.settings import build_settings
from light_tts.server.runtime.topology import PortArgs


@pytest.fixture
def small_cfg():
    return ServerConfig(
        running_max_req_size=3,
        cache_capacity=2,
        max_text_chars=100,
        max_prompt_wav_bytes=1000,
        max_prompt_seconds=2.0,
        decode_process_num=2,
    )


@pytest.fixture
def shared(small_cfg, tmp_path):
    settings = build_settings(small_cfg, ModelConfig(Path("/models/tiny")))
    ports = PortArgs.create(small_cfg)
    lock = str(tmp_path / "lock")
    slots = RequestSlots(settings.shm, ports.shm_prefix, lock, create=True)
    voices = VoiceCache(settings.shm, ports.shm_prefix, lock, create=True)
    procs = ProcessTable(small_cfg, ports.shm_prefix, lock, create=True)
    yield settings, ports, lock, slots, voices, procs
    for part in (slots, voices, procs):
        part.shm.unlink()
        part.close()


@pytest.mark.parametrize(
    "text,value", [("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False)]
)
def test_bool_flags_parse_what_people_type(text, value):
    cfg = ServerConfig.from_args(["--disable_cudagraph", text, "--load_trt", "False"])
    assert cfg.disable_cudagraph is value and cfg.load_trt is False


def test_bare_bool_flag_means_true_and_lists_and_choices():
    cfg = ServerConfig.from_args(["--disable_cudagraph", "--mode", "a", "b", "--data_type", "bfloat16"])
    assert cfg.disable_cudagraph is True and cfg.mode == ("a", "b") and cfg.data_type == "bfloat16"
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--data_type", "int8"])
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--disable_cudagraph", "maybe"])


def test_help_groups_flags_by_stage_and_shows_each_default_once():
    import re
    import subprocess
    import sys

    from light_tts.server.runtime.config import GROUPS

    text = subprocess.run(
        [sys.executable, "-m", "light_tts.server.api_server", "--help"], capture_output=True, text=True, check=True
    ).stdout
    sections = re.split(r"\n(?=\S[^\n]*:\n)", text.split("\noptions:\n", 1)[1])
    titles = [section.split(":\n", 1)[0] for section in sections[1:]]
    assert titles == list(GROUPS)
    entries = re.split(r"\n  (?=--)", "\n".join(sections[1:]))
    flags = {e.split()[0]: " ".join(e.split()) for e in entries if e.startswith("--")}
    assert len(flags) == len([f for f in dataclasses.fields(ServerConfig) if "group" in f.metadata])  # not `given`
    for entry in flags.values():
        assert entry.count("(default:") == 1, entry
        assert "(default: None)" not in entry and entry.count("default") == 1, entry
    assert "on the CPU the LLM always runs float32" in flags["--data_type"]


def test_config_validates():
    with pytest.raises(ValueError):
        ServerConfig(decode_process_num=0)
    with pytest.raises(ValueError):
        ServerConfig(device="tpu")
    with pytest.raises(ValueError):
        ServerConfig(max_total_token_num=0)


def test_slots_claim_release_and_backpressure(shared):
    _, ports, lock, slots, _, _ = shared
    taken = [slots.claim(100 + i) for i in range(3)]
    assert sorted(taken) == [0, 1, 2] and slots.claim(200) is None and slots.num_in_use() == 3
    slots.release(taken[1], 999)  # another request's id frees nothing
    assert slots.num_in_use() == 3
    slots.release(taken[1], 101)
    assert slots.claim(300) == taken[1]


def _claim_for_rank(sizes, prefix, lock, http_rank, req_id):
    slots = RequestSlots(sizes, prefix, lock)
    slots.claim(req_id, http_rank=http_rank)
    slots.close()


def test_a_restarted_http_worker_adopts_only_its_predecessors_slots(shared):
    """Slots of a dead HTTP worker stay held until its replacement (same rank, another pid) adopts them."""
    settings, ports, lock, slots, _, _ = shared
    ctx = mp.get_context("spawn")
    for rank, req_id in ((1, 501), (0, 502)):  # a dead worker of each rank
        proc = ctx.Process(target=_claim_for_rank, args=(settings.shm, ports.shm_prefix, lock, rank, req_id))
        proc.start()
        proc.join(30)
    mine = slots.claim(503, http_rank=1)  # the replacement claimed nothing yet in practice; its own stay its own
    assert slots.num_in_use() == 3
    adopted = slots.adopt(1)
    assert [req_id for _, req_id in adopted] == [501] and slots.num_in_use() == 3
    assert slots.adopt(1) == []  # adopted once
    for slot, req_id in adopted:
        slots.release(slot, req_id)
    assert slots.num_in_use() == 2 and slots.a["owner"][mine] == 503


def test_slot_bytes_and_prompt_round_trip(shared):
    _, _, _, slots, _, _ = shared
    slots.write_bytes(0, "text", "héllo".encode())
    assert slots.read_bytes(0, "text").decode() == "héllo"
    with pytest.raises(ValueError):
        slots.write_bytes(0, "wav", b"x" * 1001)
    rng = np.random.default_rng(0)
    prompt = (
        np.arange(5, dtype=np.int32),
        np.arange(7, dtype=np.int32),
        rng.standard_normal(192).astype(np.float32),
        rng.standard_normal((14, 80)).astype(np.float32),
    )
    slots.write_prompt(1, *prompt)
    for got, want in zip(slots.read_prompt(1), prompt):
        np.testing.assert_array_equal(got, want)
    text, speech = slots.read_llm_prompt(1)  # zero-shot: the LLM gets the prompt speech too
    assert text.tolist() == prompt[0].tolist() and speech.tolist() == prompt[1].tolist()
    slots.write_llm_prompt(1, np.array([9, 8], np.int32), uses_prompt_speech=False)  # instruct, cross-lingual
    text, speech = slots.read_llm_prompt(1)
    assert text.tolist() == [9, 8] and len(speech) == 0
    np.testing.assert_array_equal(slots.read_prompt_features(1)[0], prompt[1])  # the flow keeps the whole prompt
    with pytest.raises(ValueError):
        slots.write_prompt(1, prompt[0], prompt[1], prompt[2], prompt[3][:13])


def _claim_many(sizes, prefix, lock, base, out):
    slots = RequestSlots(sizes, prefix, lock)
    out.put([slots.claim(base + i) for i in range(3)])
    slots.close()


def test_slot_claims_are_exclusive_across_processes(shared):
    settings, ports, lock, slots, _, _ = shared
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_many, args=(settings.shm, ports.shm_prefix, lock, 1000 * (k + 1), out))
        for k in range(2)
    ]
    for p in procs:
        p.start()
    claimed = [s for _ in procs for s in out.get(timeout=30) if s is not None]
    for p in procs:
        p.join()
    assert sorted(claimed) == [0, 1, 2]  # 6 attempts, 3 slots, no slot twice


def test_voice_cache_lru(shared):
    _, _, _, _, voices, _ = shared

    def voice(n):
        return np.full(n, n, np.int32), np.full(192, n, np.float32), np.full((2 * n, 80), n, np.float32)

    assert voices.get("a") is None
    voices.put("a", *voice(3))
    voices.put("b", *voice(4))
    assert voices.get("a")[0].tolist() == [3, 3, 3]  # a is now the most recent
    voices.put("c", *voice(5))  # evicts b, the least recently used
    assert voices.get("b") is None and voices.get("c")[2].shape == (10, 80) and voices.num_entries() == 2
    with pytest.raises(ValueError):
        voices.put("d", voice(3)[0], voice(3)[1], voice(4)[2])


def test_process_table_readiness(shared):
    _, _, _, _, _, procs = shared
    assert not procs.all_backends_ready()
    for stage, rank in procs.backend_states():
        procs.set(stage, rank, state=ProcessTable.READY)
    assert procs.all_backends_ready() and procs.dead_backends() == []
    procs.set("decode", 1, state=ProcessTable.DEAD)
    assert procs.dead_backends() == [("decode", 1)] and not procs.all_backends_ready()


def test_form_parsing_is_strict():
    """Multipart fields are decoded as strict UTF-8 and validated before anything reaches a slot."""
    from fastapi import FastAPI, Request
    from fastapi.testclient import TestClient

    from light_tts.errors import LightTTSError
    from light_tts.server.api.request_parsing import parse_zero_shot

    settings = build_settings(
        ServerConfig(max_text_chars=20, max_prompt_wav_bytes=100, max_req_total_len=500),
        ModelConfig(Path("/models/tiny")),
    )
    app = FastAPI()

    @app.post("/p")
    async def parse(request: Request):
        try:
            inputs = await parse_zero_shot(request, settings)
        except LightTTSError as e:
            return {"kind": e.kind}
        return {
            "text": inputs.tts_text,
            "stream": inputs.stream,
            "speed": inputs.speed,
            "seed": inputs.seed,
            "fixed": inputs.fixed_speech_tokens,
            "voice_id": inputs.voice_id,
            "prompt_text": inputs.prompt_text,
            "instruct_text": inputs.instruct_text,
            "mode": inputs.mode,
        }

    client = TestClient(app)

    def post(files):
        return client.post("/p", files={k: (None, v) if k != "prompt_wav" else ("p.wav", v) for k, v in files.items()})

    good = {"tts_text": "héllo".encode(), "prompt_text": b"p", "prompt_wav": b"RIFF", "stream": b"True", "seed": b"7"}
    assert post(good).json() == {
        "text": "héllo",
        "stream": True,
        "speed": 1.0,
        "seed": 7,
        "fixed": None,
        "voice_id": None,
        "prompt_text": "p",
        "instruct_text": None,
        "mode": None,
    }
    # a saved voice instead of the prompt fields, also as a urlencoded form (no file to upload)
    saved = {"tts_text": "héllo", "voice_id": "voice_1", "stream": "false"}
    assert client.post("/p", data=saved).json()["voice_id"] == "voice_1"
    assert client.post("/p", data=saved).json()["text"] == "héllo"
    assert post({**good, "voice_id": b"voice_1"}).json()["kind"] == "bad_request"  # both: which voice?
    assert client.post("/p", data={"tts_text": "hi"}).json()["kind"] == "bad_request"  # no voice at all
    assert (
        client.post(
            "/p", content=b"tts_text=%FF&voice_id=v", headers={"content-type": "application/x-www-form-urlencoded"}
        ).json()["kind"]
        == "bad_text"
    )  # strict UTF-8
    assert post({**good, "fixed_speech_tokens": b"500"}).json()["fixed"] == 500
    for bad in (b"0", b"501", b"-2", b"ten", b"2.5"):
        assert post({**good, "fixed_speech_tokens": bad}).json()["kind"] == "bad_request", bad
    assert post({**good, "tts_text": b"\xff\xfe"}).json()["kind"] == "bad_text"
    assert post({**good, "tts_text": b"x" * 21}).json()["kind"] == "bad_text"
    assert post({**good, "prompt_wav": b"x" * 101}).json()["kind"] == "too_large"
    for blank in (b"", b"  \n"):  # a blank transcript is refused (a missing one means none: cross-lingual)
        assert post({**good, "prompt_text": blank}).json() == {"kind": "bad_text"}
    assert post({**good, "prompt_wav": b""}).json()["kind"] == "bad_audio"
    assert post({**good, "speed": b"-1", "stream": b"false"}).json()["kind"] == "bad_request"
    assert post({**good, "speed": b"nan", "stream": b"false"}).json()["kind"] == "bad_request"
    assert post({**good, "speed": b"1.5"}).json()["kind"] == "bad_request"  # stream with speed != 1
    assert post({k: v for k, v in good.items() if k != "prompt_wav"}).json()["kind"] == "bad_request"
    # no transcript is a voice without one (cross-lingual); an instruction, a mode
    assert post({k: v for k, v in good.items() if k != "prompt_text"}).json()["prompt_text"] is None
    modes = post({**good, "instruct_text": b"Speak softly.", "mode": b"instruct"}).json()
    assert (modes["instruct_text"], modes["mode"]) == ("Speak softly.", "instruct")
    assert post({**good, "mode": b"vc"}).json()["kind"] == "bad_request"  # vc has its own endpoint
    assert post({**good, "instruct_text": b"x" * 21}).json()["kind"] == "bad_text"
    multipart = {"content-type": "multipart/form-data; boundary=XyZ"}
    for body in (b"x" * 200_000, iter([b"x" * 50_000] * 4)):  # declared by Content-Length, or only streamed
        assert client.post("/p", content=body, headers=multipart).json()["kind"] == "too_large"


def test_hop_policy_and_decode_dtype_flags():
    cfg = ServerConfig.from_args(["--hop_policy", "fixed", "--decode_data_type", "bfloat16"])
    assert cfg.hop_policy == "fixed" and cfg.decode_data_type == "bfloat16"
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--hop_policy", "sometimes"])


def test_decode_hot_path_flag_turns_every_variant_off():
    model = ModelConfig(Path("/models/tiny"))
    auto = build_settings(ServerConfig(), model).decode_engine_kwargs("cuda")["limits"]
    per_op = build_settings(ServerConfig.from_args(["--decode_hot_path", "per_op"]), model)
    limits = per_op.decode_engine_kwargs("cuda")["limits"]
    fused = build_settings(ServerConfig.from_args(["--decode_hot_path", "fused"]), model)
    hift = ("hift_half", "keyed_noise", "overlap_hift")
    # auto: the HiFT variants on a GPU (None), the fused estimator off (slower on an H100)
    assert all(getattr(auto, v) is None for v in hift) and auto.fused_flow is False
    assert all(getattr(limits, v) is False for v in (*hift, "fused_flow"))
    assert fused.decode_engine_kwargs("cuda")["limits"].fused_flow is True


def test_playback_counts_stalls_and_slack():
    from light_tts.server.metrics.playback import Playback

    p = Playback(sample_rate=100)
    assert p.on_chunk(100, now=10.0) == (0.0, None)  # 1 s of audio: playback runs until 11.0
    stall, slack = p.on_chunk(100, now=10.4)
    assert stall == 0.0 and abs(slack - 0.6) < 1e-9
    stall, slack = p.on_chunk(50, now=12.5)  # due at 12.0: half a second of silence, playback resumes at 12.5
    assert abs(stall - 0.5) < 1e-9 and abs(slack + 0.5) < 1e-9
    stall, slack = p.on_chunk(50, now=12.9)  # due at 13.0
    assert stall == 0.0 and abs(slack - 0.1) < 1e-9


def test_idle_release_state_machine():
    from light_tts.server.workers.idle import IdleRelease

    idle = IdleRelease(idle_s=5.0)
    assert not idle.should_release(has_work=False, now=0.0)  # idle from t=0
    assert not idle.should_release(has_work=True, now=3.0)  # work resets the idle clock
    assert not idle.should_release(has_work=False, now=4.0)
    assert not idle.should_release(has_work=False, now=8.9)
    assert idle.should_release(has_work=False, now=9.0) and idle.is_released
    assert not idle.should_release(has_work=False, now=20.0)  # released once
    assert idle.needs_reload()
    idle.reloaded(1.25)
    assert not idle.needs_reload() and idle.reload_seconds == [1.25]
    assert not IdleRelease(idle_s=0).should_release(has_work=False, now=1e9)  # off


def test_voice_cache_keys_are_per_frontend(shared):
    from light_tts.server.ipc.voice_cache import voice_cache_key

    _, _, _, _, voices, _ = shared
    rng = np.random.default_rng(1)
    feats = (
        np.arange(4, dtype=np.int32),
        rng.standard_normal(192).astype(np.float32),
        rng.standard_normal((8, 80)).astype(np.float32),
    )
    voices.put(voice_cache_key("front-1", "audio"), *feats)
    assert voices.get(voice_cache_key("front-1", "audio")) is not None  # another model of that frontend: a hit
    assert voices.get(voice_cache_key("front-2", "audio")) is None  # another frontend: its own entry


def test_a_finished_request_logs_one_line_with_its_mode(caplog):
    """The request log line (INFO) names endpoint, model, mode, voice kind and outcome."""
    import time

    from light_tts.server.api.http_manager import RequestHandle
    from light_tts.server.api.request_metrics import record_finished

    handle = RequestHandle(
        7, 0, 0, time.monotonic(), 24000, model_name="tiny", mode="instruct", num_samples=24000, voice_kind="saved"
    )
    with caplog.at_level(logging.INFO, logger="light_tts.http"):
        record_finished("v1_audio_speech", handle, None)
        record_finished("v1_audio_speech", handle, TooLargeError("too long"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request 7 ")]
    assert len(lines) == 2
    assert "v1_audio_speech model=tiny mode=instruct voice=saved outcome=ok audio=1.00s" in lines[0]
    assert "outcome=too_large" in lines[1]
