"""The server's typed boundaries: wire messages (msgspec, no pickle), dispatch tables, published endpoints, the
audio ring, the settings builder, and what each stage imports."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from light_tts.errors import RequestError, TextError, error_from_kind
from light_tts.model_config import FlowConfig, MelConfig, ModelConfig
from light_tts.server.ipc import io_struct
from light_tts.server.ipc.audio_ring import AudioRing
from light_tts.server.ipc.channels import Handlers, Inbox, Outbox
from light_tts.server.ipc.io_struct import (
    AbortDone,
    AbortRequest,
    AudioReady,
    ComputeFeatures,
    DecodeStart,
    EncodeRequest,
    FeaturesReady,
    LLMRequestIn,
    RequestFailed,
    RequestParams,
    SpeechTokenBatch,
    TextPiece,
    TextTokens,
)
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.settings import build_settings
from light_tts.server.runtime.topology import PortArgs

PARAMS = RequestParams(req_id=7, slot=1, http_rank=0, stream=True, speed=1.0, seed=3, fixed_speech_tokens=25)


def every_message():
    batch = SpeechTokenBatch()
    batch.append(7, 0, [1, 2, 3], True, False, 99, 60)
    return [
        EncodeRequest(PARAMS, False),
        EncodeRequest(PARAMS, True, "ef" * 32),
        ComputeFeatures(7, 1, 0),
        FeaturesReady(7, 1.5),
        TextPiece(7, "héllo", True),
        LLMRequestIn(PARAMS, "ab" * 32, True),
        TextTokens(7, [[1, 2], [3]], True),
        DecodeStart(PARAMS, "cd" * 32),
        batch,
        AudioReady(7, 10, 3, b"\x01\x00" * 3, False),
        RequestFailed(7, "bad_text", "encode0", "empty"),
        AbortRequest(7, 0),
        AbortDone(7, "llm0"),
    ]


def test_every_message_round_trips_through_its_inbox():
    inboxes = (io_struct.ENCODE_INBOX, io_struct.LLM_INBOX, io_struct.DECODE_INBOX, io_struct.HTTP_INBOX)
    for message in every_message():
        frame = io_struct.encode(message)
        accepting = [t for t in inboxes if type(message) in t.__args__]
        assert accepting, type(message).__name__
        assert io_struct.decoder(accepting[0]).decode(frame) == message
        refusing = [t for t in inboxes if type(message) not in t.__args__]
        for inbox in refusing:  # another process's message is refused by validation, never executed
            with pytest.raises(msgspec.ValidationError):
                io_struct.decoder(inbox).decode(frame)


def test_error_kinds_are_typed_fields():
    frame = io_struct.encode(RequestFailed(7, "bad_text", "encode0", "empty"))
    assert b"bad_text" in frame
    forged = frame.replace(b"bad_text", b"evil_xx!")  # same length: only the kind is wrong
    with pytest.raises(msgspec.ValidationError):
        io_struct.decoder(io_struct.HTTP_INBOX).decode(forged)
    error = error_from_kind("bad_text", "empty")
    assert isinstance(error, TextError) and error.http_status == 400
    assert isinstance(error_from_kind("bad_request", "x"), RequestError)


def test_dispatch_raises_on_a_message_without_a_handler():
    seen = []
    handlers = Handlers("test0", {AbortRequest: seen.append})
    handlers(AbortRequest(1, 0))
    assert seen == [AbortRequest(1, 0)]
    with pytest.raises(TypeError, match="no handler for TextPiece"):
        handlers(TextPiece(1, "x", True))


@pytest.fixture
def table(tmp_path):
    cfg = ServerConfig(decode_process_num=2)
    ports = PortArgs.create(cfg)
    t = ProcessTable(cfg, ports.shm_prefix, str(tmp_path / "lock"), create=True)
    yield cfg, ports, t
    t.shm.unlink()
    t.close()


@pytest.mark.parametrize("mode", ["ipc:///tmp/", "tcp://"])
def test_receivers_bind_then_publish_and_senders_follow_a_restart(table, mode, caplog):
    """The inbox binds first (the OS picks the port) and publishes the address; an outbox connects to it, and
    reconnects when a new process publishes a new address for the same row. Garbage frames are logged."""
    cfg, _, t = table
    ports = dataclasses.replace(PortArgs.create(cfg), zmq_mode=mode)
    ctx = zmq.Context()
    received = []
    handlers = Handlers("decode1", {AbortRequest: received.append})
    outbox = Outbox(ctx, t, "decode", 1)
    with pytest.raises(Exception, match="not listening yet"):
        outbox.send(AbortRequest(1, 0))
    try:
        addresses = []
        for attempt in range(2):  # the second inbox stands for a restarted decode1
            inbox = Inbox(ctx, ports, t, "decode", 1, handlers)
            addresses.append(t.address("decode", 1)[1])
            assert addresses[-1].startswith(mode)
            outbox.send(AbortRequest(10 + attempt, 0))
            received += poll(inbox)
            inbox.socket.close(linger=0)
        assert [m.req_id for m in received] == [10, 11]
        assert addresses[0] != addresses[1]
        assert t.generation("decode", 1) == 2
        inbox = Inbox(ctx, ports, t, "decode", 1, handlers)
        raw = ctx.socket(zmq.PUSH)
        raw.connect(t.address("decode", 1)[1])
        with caplog.at_level(logging.ERROR, logger="light_tts.wire"):
            raw.send(b"\x80\x03not msgpack at all")
            raw.send(io_struct.encode(TextPiece(1, "for the encode process", True)))
            raw.send(io_struct.encode(AbortRequest(12, 0)))
            assert [m.req_id for m in poll(inbox, want=1)] == [12]
        assert caplog.text.count("decode1 refused a") == 2
        raw.close(linger=0)
        inbox.socket.close(linger=0)
    finally:
        outbox.close()
        ctx.term()
    for path in ports.ipc_paths():
        path.unlink()


def poll(inbox: Inbox, want: int = 1) -> list:
    messages, deadline = [], time.monotonic() + 10
    while len(messages) < want and time.monotonic() < deadline:
        messages += inbox.receive(100, 10)
    return messages


def test_audio_ring_wraps_never_overwrites_unread_audio():
    """The writer's and the reader's side of one ring, built directly."""
    ring = AudioRing(np.zeros((2, 100), np.int16), np.zeros(2, np.int64))
    ring.reset(1)
    written = 0
    for n in (60, 30):
        assert ring.try_write(1, written, np.arange(written, written + n, dtype=np.int16))
        written += n
    assert not ring.try_write(1, written, np.ones(11, np.int16))  # 90 unread + 11 > 100
    first = np.frombuffer(ring.read(1, 0, 60), np.int16)
    assert first.tolist() == list(range(60))
    chunk = np.arange(500, 550, dtype=np.int16)  # wraps past the ring's end
    assert ring.try_write(1, written, chunk)
    assert np.frombuffer(ring.read(1, 60, 30), np.int16).tolist() == list(range(60, 90))
    assert np.frombuffer(ring.read(1, 90, 50), np.int16).tolist() == chunk.tolist()
    assert int(ring.read_pos[1]) == 140 and int(ring.read_pos[0]) == 0  # the other slot untouched


def test_settings_derive_every_size_from_config_and_model():
    model = ModelConfig(
        Path("/models/m16k"),
        sample_rate=16000,
        token_frame_rate=50,
        token_mel_ratio=2,
        flow=FlowConfig(spk_embed_dim=256),
        feat=MelConfig(num_mels=100),
    )
    cfg = ServerConfig(
        running_max_req_size=5,
        max_text_chars=300,
        max_prompt_seconds=4,
        cache_capacity=7,
        max_req_total_len=900,
        router_max_wait_tokens=3,
        data_type="bfloat16",
        kv_cache_mem_fraction=0.3,
        disable_prefix_cache=True,
        quantization="int8",
        kv_cache_dtype="fp8",
        llm_small_batch_rows=2,
    )
    s = build_settings(cfg, model)
    assert (s.model_names, s.model.sample_rate, s.model.token_rate) == (["m16k"], 16000, 50)
    assert s.shm.audio_ring_samples == 60 * 16000 and s.shm.prompt_speech_tokens == 4 * 50 + 50
    assert (s.shm.embedding_dim, s.shm.num_mels, s.shm.prompt_mel_frames) == (256, 100, 500)
    assert (s.shm.num_slots, s.shm.text_bytes, s.shm.cache_capacity) == (5, 1200, 7)
    engine = s.llm_engine_config("cuda:0")
    assert dataclasses.asdict(engine) == {
        "max_total_token_num": None,
        "batch_max_tokens": 900,
        "running_max_req_size": 5,
        "graph_max_batch_size": 5,  # every batch the request slots allow runs as a graph
        "disable_cudagraph": False,
        "prefill_graph_max_tokens": 512,
        "data_type": "bfloat16",
        "router_max_wait_tokens": 3,
        "max_req_total_len": 900,
        "enable_prefix_cache": False,
        "kv_cache_mem_fraction": 0.3,
        "first_hop_tokens": 2 * 25 - 1 + 3,  # the model's chunk (25) less one of alignment pad, and its lookahead
        "ahead_tokens": int(cfg.llm_ahead_seconds * 50),  # at the model's 50 tokens per second
        "tokens_per_second": 50,
        "quantization": "int8",
        "kv_cache_dtype": "fp8",
        "small_batch_rows": 2,
    }
    assert s.llm_engine_config("cpu").data_type == "float32"
    assert s.max_fixed_speech_tokens == 900
    smaller = build_settings(dataclasses.replace(cfg, graph_max_batch_size=2), model)
    assert smaller.llm_engine_config("cuda:0").graph_max_batch_size == 2
    default = build_settings(dataclasses.replace(cfg, llm_small_batch_rows=-1), model)  # the flag's default
    assert default.llm_engine_config("cuda:0").small_batch_rows == 2  # CosyVoice's: faster on an H100
    assert default.llm_engine_config("cpu").small_batch_rows == 0  # the CPU would run the references


@pytest.mark.parametrize(
    "mode, num_gpus, device",
    [
        ("auto", 0, None),
        ("torch", 0, "cpu"),
        ("onnx", 0, None),
        ("auto", 1, "cuda:0"),
        ("torch", 1, "cuda:0"),
        ("onnx", 1, None),
    ],
)
def test_prompt_models_run_where_the_flag_and_the_host_say(mode, num_gpus, device):
    settings = build_settings(ServerConfig(prompt_models=mode), ModelConfig(Path("/models/tiny")), num_gpus=num_gpus)
    assert settings.prompt_device() == device


def test_first_chunk_tokens_follow_the_decode_schedule():
    facts = build_settings(ServerConfig(), ModelConfig(Path("/models/tiny"))).model
    for prompt, first in ((125, 25 + 3), (126, 49 + 3), (149, 26 + 3)):  # the pad aligns prompt + hop to 25
        assert (
            build_settings(ServerConfig(), ModelConfig(Path("/models/tiny"))).first_chunk_tokens(facts, prompt) == first
        )
    short = build_settings(ServerConfig(first_hop_tokens=15), ModelConfig(Path("/models/tiny")))
    assert short.first_chunk_tokens(facts, 126) == 15 + 3


def test_settings_survive_json_for_gunicorn_workers():
    settings = build_settings(ServerConfig(mode=("a",)), ModelConfig(Path("/models/tiny")))
    ports = PortArgs.create(settings.cfg)
    data = msgspec.json.encode((settings, ports))
    assert msgspec.json.decode(data, type=tuple[type(settings), PortArgs]) == (settings, ports)


def test_compatibility_flags_say_they_do_nothing():
    assert ServerConfig.from_args([]).ignored_flags() == []
    notes = ServerConfig.from_args(["--mode", "triton_gqa_flashdecoding", "--decode_paral_num", "4"]).ignored_flags()
    assert len(notes) == 2 and all("has no effect" in n for n in notes)


STAGE_IMPORTS = {
    "llm": ("light_tts.server.workers.llm_worker", "light_tts.llm.engine"),
    "decode": ("light_tts.server.workers.decode_worker", "light_tts.decode.engine"),
    "http": ("light_tts.server.api.app",),
}
NOT_RUN_BY = {
    "llm": (
        "light_tts.pipeline",
        "light_tts.frontend.frontend",
        "soundfile",
        "onnxruntime",
        "fastapi",
        "light_tts.decode",
    ),
    "decode": ("light_tts.pipeline", "light_tts.frontend.frontend", "onnxruntime", "fastapi", "light_tts.llm"),
    "http": ("torch", "light_tts.pipeline", "onnxruntime", "soundfile"),
}


@pytest.mark.parametrize("stage", list(STAGE_IMPORTS))
def test_a_stage_imports_only_what_it_runs(stage):
    code = (
        "import sys, json; "
        + "; ".join(f"import {m}" for m in STAGE_IMPORTS[stage])
        + "; print(json.dumps(sorted(sys.modules)))"
    )
    modules = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    loaded = [m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in NOT_RUN_BY[stage])]
    assert loaded == []
