"""The capacity benchmark's load generator: streamed POST /inference_zero_shot requests (in any text mode), or
streamed POST /v1/audio/voice-conversion requests, closed-loop (N workers back to back) or open-loop (sent at
scheduled times whatever the server does), over one or more client processes.

A client process is one asyncio loop with httpx clients of one connection each (ClientPool). It records only
arrival times and sizes of the network reads (light_tts.bench.serving.stream_stats scores them afterwards), and the
lateness of its own timer: if the loop is busy, chunk arrivals are recorded late and look like server stalls, so
that lag is reported beside the results. Work is split over processes by closed-loop worker or by request index, so any
split sends the same requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import ssl
import time
from dataclasses import dataclass

import httpx
import numpy as np

from light_tts.bench.serving.player import is_new_voice

TAG_SAMPLES = 64  # a new voice differs from its saved voice by +-1 LSB on this many final samples (inaudible)
KEEPALIVE_S = 2.0  # client side, below the server's keep-alive timeout
FIRST_AUDIO_GAP_S = 0.25  # --first_audio_only: a closed-loop worker's pause while the server aborts the stream it
# left (a decode step or two on a GPU), so that the next request meets an idle server as after a whole stream


def tagged(wav: bytes, tag: int) -> bytes:
    """The same voice as `wav` (written by wav_bytes: the samples end the file) with different bytes: the server's
    voice cache, keyed by the audio's hash, misses, and the prompt is encoded again as for a voice never seen
    before. Distinct 64-bit tags give distinct bytes (a full-scale sample steps down instead of up)."""
    out = bytearray(wav)
    tail = np.frombuffer(out, dtype="<i2", count=TAG_SAMPLES, offset=len(out) - 2 * TAG_SAMPLES).astype(np.int32)
    bits = np.array([(tag >> i) & 1 for i in range(TAG_SAMPLES)], dtype=np.int32)
    tail = np.where(tail < 32767, tail + bits, tail - bits)
    out[-2 * TAG_SAMPLES :] = tail.astype("<i2").tobytes()
    return bytes(out)


@dataclass
class Voices:
    """Prompts of the run. Saved voice k is `saved_wavs[k]` (sent as bytes, a voice cache hit once warmed), or the
    id `saved_ids[k]` from the saved-voices API when the server has it. A new voice is saved voice (index % K)
    tagged with (nonce, index): distinct bytes per request and per run, so a rerun against the same server misses
    the cache too."""

    saved_wavs: list[bytes]
    prompt_text: str
    nonce: int
    saved_ids: list[str] | None = None
    named: str | None = None  # a model's named voice (Orpheus): every request names it, nothing is uploaded

    def fields(self, index: int, is_new: bool) -> tuple[dict, dict]:
        """(form fields, files) that name request `index`'s voice."""
        if self.named is not None:
            return {}, {"voice_id": (None, self.named)}
        k = index % len(self.saved_wavs)
        if not is_new and self.saved_ids:  # a file-less part: httpx sends multipart only when there are parts
            return {}, {"voice_id": (None, self.saved_ids[k])}
        wav = tagged(self.saved_wavs[k], (self.nonce << 32) | index) if is_new else self.saved_wavs[k]
        return {"prompt_text": self.prompt_text}, {"prompt_wav": ("prompt.wav", wav, "audio/wav")}

    def vc_fields(self, index: int, is_new: bool) -> dict:
        """The files of a voice conversion's target, request `index`'s voice (saved id, or its recording)."""
        _, files = self.fields(index, is_new)
        if "voice_id" in files:
            return {"voice": files["voice_id"]}
        return {"prompt_audio": files["prompt_wav"]}


@dataclass
class Share:
    """One client process's part of a load level. Closed loop over `concurrency` workers: this process runs the
    workers numbered `workers`, and worker w sends requests w, w + concurrency, w + 2 x concurrency, ... one after
    the other, while the index is below `max_requests` and less than `duration_s` has passed since the start.
    Open loop: `arrivals` lists (index, send time in s since the start).

    Ramp: closed-loop worker w sends its first request at w x ramp_s / concurrency, so that streams of one fixed
    length do not start (and end, and restart) in lockstep; those first requests, and open-loop requests sent in
    the first ramp_s seconds, ran while the load was building up and are marked `is_ramp` (not scored)."""

    url: str
    voices: Voices
    form: dict  # tts_text, stream, seed base, fixed_speech_tokens (and mode, instruct_text); vc: stream, seed
    new_voice_fraction: float
    timeout_s: float
    start_epoch: float  # time.time() at which the level starts, the same for every process
    concurrency: int = 0
    workers: list[int] | None = None
    max_requests: int | None = None
    duration_s: float | None = None
    arrivals: list[tuple[int, float]] | None = None
    ramp_s: float = 0.0
    first_audio_only: bool = False  # close each stream at its first audio (TTFA only; the server aborts the rest)
    source_wav: bytes | None = None  # voice conversion: every request converts this recording (else: text)

    @property
    def path(self) -> str:
        return "/v1/audio/voice-conversion" if self.source_wav is not None else "/inference_zero_shot"


def request_form(share: Share, index: int) -> tuple[dict, dict, str]:
    is_new = is_new_voice(index, share.new_voice_fraction)
    form = {k: v for k, v in share.form.items() if k != "seed"}
    form["seed"] = str(share.form["seed"] + index)
    if share.source_wav is not None:
        files = {"audio": ("source.wav", share.source_wav, "audio/wav"), **share.voices.vc_fields(index, is_new)}
        return form, files, "new" if is_new else "saved"
    voice_fields, files = share.voices.fields(index, is_new)
    return {**form, **voice_fields}, files, "new" if is_new else "saved"


class ClientPool:
    """httpx clients of one connection each, reused by one request at a time. One client with hundreds of
    connections costs O(connections) per request in httpcore's pool bookkeeping, which made the benchmark client,
    not the server, the bottleneck at 300 streams (measured: docs/bench-streams.md)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.ssl_context = ssl.create_default_context()  # made once: httpx would build one per client (~0.1 s)
        self.free, self.clients = [], []

    def acquire(self) -> httpx.AsyncClient:
        if not self.free:
            # an idle connection is dropped after 2 s, before uvicorn's 5-s keep-alive timeout can close it
            # under a request being sent (which would fail that request)
            limits = httpx.Limits(max_connections=1, keepalive_expiry=KEEPALIVE_S)
            self.clients.append(
                httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), verify=self.ssl_context, limits=limits)
            )
            self.free.append(self.clients[-1])
        return self.free.pop()

    def release(self, client: httpx.AsyncClient) -> None:
        self.free.append(client)

    async def connect(self, url: str, num_clients: int) -> None:
        """Open `num_clients` kept-alive connections (a cheap GET each) before anything is timed."""
        clients = [self.acquire() for _ in range(num_clients)]
        await asyncio.gather(*(c.get(f"{url}/liveness") for c in clients), return_exceptions=True)
        for c in clients:
            self.release(c)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


async def stream_one(pool: ClientPool, share: Share, index: int, t0: float, is_ramp: bool) -> dict:
    data, files, voice = request_form(share, index)
    client = pool.acquire()
    start = time.perf_counter()
    rec = {
        "index": index,
        "voice": voice,
        "is_ramp": is_ramp,
        "start_s": start - t0,
        "status": None,
        "error": None,
        "chunk_s": [],
        "chunk_bytes": [],
        "server_timing": None,
    }
    try:
        async with client.stream("POST", f"{share.url}{share.path}", data=data, files=files) as resp:
            rec["status"] = resp.status_code
            rec["server_timing"] = resp.headers.get("server-timing")  # the server's stages (bench.serving.stage_table)
            if resp.status_code != 200:
                rec["error"] = error_message(await resp.aread())
            else:
                async for chunk in resp.aiter_raw():
                    if chunk:
                        rec["chunk_s"].append(time.perf_counter() - start)
                        rec["chunk_bytes"].append(len(chunk))
                        if share.first_audio_only and sum(rec["chunk_bytes"]) >= 2:
                            break
    except (httpx.HTTPError, OSError) as e:  # refused, timed out, or cut off mid-stream: a failed request
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["latency_s"] = time.perf_counter() - start
    pool.release(client)
    return rec


def error_message(body: bytes) -> str:
    """The message of an error body: LightTTS's {"error": "..."} or OpenAI's {"error": {"message": ...}} (/v1/*)."""
    try:
        error = json.loads(body)["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


async def watch_lag(lag_s: list[float], done: asyncio.Event, period_s: float = 0.01) -> None:
    while not done.is_set():
        t = time.perf_counter()
        await asyncio.sleep(period_s)
        lag_s.append(time.perf_counter() - t - period_s)


async def run_share_async(share: Share) -> dict:
    t0 = time.perf_counter() + (share.start_epoch - time.time())
    records, lag_s, done = [], [], asyncio.Event()
    pool = ClientPool(share.timeout_s)
    await pool.connect(share.url, len(share.workers or []))  # closed loop: every worker's connection made ahead
    await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
    watcher = asyncio.create_task(watch_lag(lag_s, done))
    try:
        if share.arrivals is not None:
            tasks = []
            for index, send_s in share.arrivals:
                await asyncio.sleep(max(0.0, t0 + send_s - time.perf_counter()))
                tasks.append(asyncio.create_task(stream_one(pool, share, index, t0, send_s < share.ramp_s)))
            records = list(await asyncio.gather(*tasks))
        else:

            async def worker(w: int):
                await asyncio.sleep(max(0.0, t0 + w * share.ramp_s / share.concurrency - time.perf_counter()))
                for index in itertools.count(w, share.concurrency):
                    late = share.duration_s is not None and time.perf_counter() - t0 >= share.duration_s
                    if late or (share.max_requests is not None and index >= share.max_requests):
                        return
                    is_ramp = share.ramp_s > 0 and index < share.concurrency
                    records.append(await stream_one(pool, share, index, t0, is_ramp))
                    if share.first_audio_only:  # the server ends the stream it was making: let it, first
                        await asyncio.sleep(FIRST_AUDIO_GAP_S)

            await asyncio.gather(*(worker(w) for w in share.workers))
    finally:
        done.set()
        await watcher
        await pool.aclose()
    return {"records": records, "lag_s": lag_s, "pid": os.getpid()}


def run_share(share: Share) -> dict:
    """Entry point of a client process (and of the single-process client)."""
    return asyncio.run(run_share_async(share))


def split(share: Share, num_procs: int) -> list[Share]:
    """The shares of up to `num_procs` client processes: closed-loop workers by w % num_procs (never an empty
    process), open-loop arrivals by index % num_procs."""
    if share.arrivals is not None:
        return [
            Share(**{**share.__dict__, "arrivals": [a for a in share.arrivals if a[0] % num_procs == rank]})
            for rank in range(num_procs)
        ]
    num_procs = min(num_procs, share.concurrency)
    return [
        Share(**{**share.__dict__, "workers": list(range(rank, share.concurrency, num_procs))})
        for rank in range(num_procs)
    ]
