"""HiFT of a step's chunks (mel -> audio) for the decode engine: chunks of equal shape in passes of at most
HIFT_MAX_ROWS rows, a failing pass retried row by row so that only the failing request fails (overlap states are
committed only after a pass succeeds).

Noise: each request's own torch.Generator (upstream's draws; the CPU default), or counter-based noise keyed by
the request's seed and the chunk's first sample index (kernels/flow/hift_noise.py; the GPU default): all rows draw in
one launch inside the HiFT graph, and a request's audio is the same alone or batched.

Overlap (the GPU default): a step's middle chunks are vocoded one step later on a second CUDA stream, while the
next step's flow pass runs on the first, so HiFT leaves the critical path of a busy engine. First chunks and
final chunks are vocoded at once (first audio is not delayed; a finished request does not linger), and a
request's deferred chunk is always vocoded before its next one. On the CPU the deferral runs without a second
stream (what the tests check: the same audio, every chunk delivered, aborts while deferred).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import torch

from light_tts.decode.engine_setup import HIFT_MAX_ROWS
from light_tts.decode.hift.hift_batch import split_hift_state, stack_hift_states
from light_tts.decode.request import DecodeRequest
from light_tts.models.cosyvoice2.hift.generator import HiFT
from light_tts.models.cosyvoice2.hift.streaming import MEL_CACHE_LEN, hift_stream_chunk

logger = logging.getLogger(__name__)


class StepJob(Protocol):
    """What HiFT needs of an engine step's chunk (engine.StepJob)."""

    req: DecodeRequest
    finalize: bool
    mel: torch.Tensor | None  # (1, 80, frames) float32
    audio: torch.Tensor | None  # set here: the chunk's audio


class HiFTStage:
    def __init__(
        self, hift: HiFT, device: torch.device, keyed: bool, overlap: bool, fail: Callable[[object, str], object]
    ):
        """keyed: counter-based noise; overlap: middle chunks one step later on a side stream (CUDA only);
        fail(request, error) -> the failed request's output."""
        self.hift, self.device, self.keyed, self.overlap, self.fail = hift, device, keyed, overlap, fail
        self.side = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        self.pending: list[StepJob] = []  # deferred to the next step (overlap)
        self.ready: torch.cuda.Event | None = None  # recorded after the pending chunks' mel was written

    def has_pending(self) -> bool:
        return bool(self.pending)

    def drop(self, req_id: str) -> None:
        """An aborted or failed request's deferred chunk is not vocoded."""
        self.pending = [job for job in self.pending if job.req.req_id != req_id]

    def vocode(self, jobs: list[StepJob], outputs: list) -> list[StepJob]:
        """The jobs whose audio is ready now (job.audio set): without overlap all of `jobs`; with it, the previous
        step's deferred chunks (vocoded on the side stream, beside this step's flow pass) and this step's first
        and final chunks. Failed requests' outputs go to `outputs`."""
        if not self.overlap:
            return self._passes(jobs, outputs)
        done = []
        if self.pending:
            with torch.cuda.stream(self.side) if self.side is not None else contextlib.nullcontext():
                if self.side is not None:
                    self.side.wait_event(self.ready)
                done = self._passes(self.pending, outputs)
                for job in done:  # copied out on the side stream: this waits for HiFT only, not for the flow
                    job.audio = job.audio.cpu()
        now = [job for job in jobs if job.finalize or job.req.audio_start is None]
        self.pending = [job for job in jobs if not (job.finalize or job.req.audio_start is None)]
        if self.pending and self.side is not None:
            self.ready = torch.cuda.Event()
            self.ready.record()
        return done + self._passes(now, outputs)

    def _passes(self, jobs: list[StepJob], outputs: list) -> list[StepJob]:
        by_shape: dict[tuple, list[StepJob]] = {}
        for job in jobs:
            key = (job.finalize, job.req.hift_state.mel is not None, job.mel.shape[2])
            by_shape.setdefault(key, []).append(job)
        groups = [g[i : i + HIFT_MAX_ROWS] for g in by_shape.values() for i in range(0, len(g), HIFT_MAX_ROWS)]
        done = []
        for group in groups:
            for part in [group] if len(group) == 1 else [group, *[[j] for j in group]]:
                try:
                    done += self._pass(part)
                    break
                except Exception as e:
                    if len(part) == 1:
                        logger.exception("HiFT of request %s failed", part[0].req.req_id)
                        outputs.append(self.fail(part[0].req, f"{type(e).__name__}: {e}"))
        return done

    def _pass(self, jobs: list[StepJob]) -> list[StepJob]:
        state = stack_hift_states([job.req.hift_state for job in jobs])
        mel = torch.cat([job.mel for job in jobs])
        if self.keyed:  # each row's first sample: its request's vocoded frames, less the re-vocoded overlap
            cached = MEL_CACHE_LEN if state.mel is not None else 0
            keys = torch.tensor(
                [
                    [j.req.seed for j in jobs],
                    [(j.req.hift_frames - cached) * self.hift.samples_per_frame for j in jobs],
                ],
                dtype=torch.int64,
            ).to(self.device)
            audio = hift_stream_chunk(self.hift, state, mel, jobs[0].finalize, noise_keys=(keys[0], keys[1]))
        else:
            audio = hift_stream_chunk(
                self.hift, state, mel, jobs[0].finalize, generator=[j.req.generator for j in jobs]
            )
        for r, (job, hift_state) in enumerate(zip(jobs, split_hift_state(state, len(jobs)))):
            job.req.hift_state = hift_state
            job.req.hift_frames += job.mel.shape[2]
            job.audio = audio[r]
        return jobs
