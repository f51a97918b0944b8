"""Placement on a simulated 2-GPU host (--simulate_gpus 2: planned as GPUs, computed on the CPU): two LLM
replicas on different "GPUs" share the requests by load, and two decode processes per "GPU" serve interleaved
requests, each of which gets exactly its own audio."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time

import httpx
import pytest
from server_harness import ServerProcess, serving, voice_wav
from test_synthesis import assert_same_audio, reference_pcm, zero_shot_form

DECODE_MEM_FRACTION, KV_FRACTION = 0.6, 0.3


@pytest.fixture(scope="module")
def placed(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("logs") / "placement.log",
        "--log_level",
        "info",
        "--simulate_gpus",
        "2",
        "--llm_gpus",
        "0,1",
        "--llm_replicas",
        "2",
        "--decode_gpus",
        "0,1",
        "--decode_process_num",
        "4",
        "--running_max_req_size",
        "16",
        "--decode_mem_fraction",
        str(DECODE_MEM_FRACTION),
        "--kv_cache_mem_fraction",
        str(KV_FRACTION),
        "--request_timeout_s",
        "120",
    )
    with serving(srv):
        yield srv


def topology(log: str) -> dict[str, str]:
    """process -> the rest of its startup topology line."""
    return dict(re.findall(r"topology: (\w+\d+) (.*)", log))


def test_the_printed_topology_places_every_process_and_its_memory_share(placed):
    lines = topology(placed.log_path.read_text())
    for name, gpu in (("llm0", 0), ("llm1", 1), ("decode0", 0), ("decode1", 1), ("decode2", 0), ("decode3", 1)):
        assert f"on cuda:{gpu} (simulated on the CPU)" in lines[name], lines[name]
    for name in ("decode0", "decode1", "decode2", "decode3"):
        assert f"memory share {DECODE_MEM_FRACTION / 2:.3g}" in lines[name]  # two decode processes per GPU
    for name in ("llm0", "llm1"):  # one LLM per GPU: each has the whole KV fraction
        assert f"memory share {KV_FRACTION:.3g}" in lines[name]
    assert "on cpu" in lines["encode0"]


def test_interleaved_requests_each_get_their_own_audio_from_every_process(placed, pipeline):
    jobs = [(f"Hello {i}.", voice_wav(30 + i % 4), 200 + i, i % 2 == 1) for i in range(12)]
    before = placed.metrics()

    async def one(client, text, wav, seed, stream):
        r = await client.post(
            f"{placed.url}/inference_zero_shot",
            data=zero_shot_form(text, seed, stream),
            files={"prompt_wav": ("p.wav", wav, "audio/wav")},
        )
        return r.status_code, r.content

    async def all_at_once():
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(*(one(client, *job) for job in jobs))

    for (text, wav, seed, stream), (status, body) in zip(jobs, asyncio.run(all_at_once())):
        assert status == 200, body[:300]
        assert_same_audio(body, reference_pcm(pipeline, text, wav, seed, stream=stream))
    after = placed.metrics()

    def served(stage, rank):
        key = ("lighttts_stage_requests_total", (("rank", str(rank)), ("stage", stage)))
        return after.get(key, 0) - before.get(key, 0)

    llm = [served("llm", r) for r in range(2)]
    decode = [served("decode", r) for r in range(4)]
    assert sum(llm) == sum(decode) == len(jobs), (llm, decode)
    assert min(llm) > 0, llm  # the dispatcher used both LLM replicas
    assert decode[0] + decode[2] > 0 and decode[1] + decode[3] > 0, decode  # and decode processes on both "GPUs"
    placed.wait_slots_free(60.0)


def test_a_failed_decode_process_fails_only_the_streams_it_held(placed, pipeline):
    """A stream on one decode process goes on, to its exact audio, while another decode process of the same
    model dies and is restarted (the slot records which decode process each request went to)."""
    text, wav, seed = "Hello there, this stream outlives another process.", voice_wav(40), 300
    before = placed.metrics()
    result: dict = {}

    def stream():
        with httpx.stream(
            "POST",
            f"{placed.url}/inference_zero_shot",
            data=zero_shot_form(text, seed, True),
            files={"prompt_wav": ("p.wav", wav, "audio/wav")},
            timeout=180,
        ) as r:
            result["status"], result["body"] = r.status_code, b"".join(r.iter_raw())

    client = threading.Thread(target=stream)
    client.start()
    deadline = time.monotonic() + 60
    while (rank := started_on(placed, before)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rank is not None, "the stream never reached a decode process"
    other = (rank + 1) % 4
    victim = httpx.get(f"{placed.url}/readiness").json()["processes"][f"decode{other}"]["pid"]
    os.kill(victim, signal.SIGKILL)
    client.join(120)
    assert result["status"] == 200
    assert_same_audio(result["body"], reference_pcm(pipeline, text, wav, seed, stream=True))
    deadline = time.monotonic() + 60  # the restart policy brings the dead one back
    while httpx.get(f"{placed.url}/readiness").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    processes = httpx.get(f"{placed.url}/readiness").json()["processes"]
    assert processes[f"decode{other}"]["pid"] != victim
    assert f"decode{other} (pid {victim}) DIED" in placed.log_path.read_text()


def started_on(srv, before: dict) -> int | None:
    """The decode rank that started a request since `before` (lighttts_stage_requests_total), if one did."""
    after = srv.metrics()
    for rank in range(4):
        key = ("lighttts_stage_requests_total", (("rank", str(rank)), ("stage", "decode")))
        if after.get(key, 0) > before.get(key, 0):
            return rank
    return None
