"""The decode engine of the server's decode process: speech tokens of many requests -> 24 kHz audio, with each
step running the ready chunks of up to max_batch_size requests as batched flow and HiFT passes.

Every request follows Token2WavSession's schedule (stream) or Token2Wav.offline (non-stream) and produces the same
audio (to float rounding): batching stacks per-request states (decode/batch.py), it never changes a request's
inputs, and every request draws its HiFT noise from its own seeded generator.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from light_tts.decode.batch import split_hift_state, split_row, stack_flow_states, stack_hift_states
from light_tts.decode.cuda_graph import EstimatorGraphs
from light_tts.decode.hift_graph import HiFTGraphs
from light_tts.decode.request import ChunkJob, DecodeRequest
from light_tts.frontend.prompt import Prompt
from light_tts.models.flow.cache import FlowStreamState
from light_tts.model_config import ModelConfig
from light_tts.models.hift.streaming import hift_stream_chunk
from light_tts.token2wav import ChunkSchedule, HopPolicy, Token2Wav, first_hop_pad, prompt_tensors

logger = logging.getLogger(__name__)


@dataclass
class AudioOutput:
    req_id: str
    audio: np.ndarray  # float32, 24 kHz mono, within [-audio_limit, audio_limit]
    finished: bool
    error: str | None = None


@dataclass
class FlowBatch:
    """The batched flow state of a multi-request flow pass, kept whole for as long as the same requests run
    together (the steady state of lockstep streams): the next pass of exactly these requests reuses it, with no
    stacking and no split. Its requests have `flow_row` set; their own `flow_state` is stale until released."""

    reqs: list[DecodeRequest]
    state: FlowStreamState


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float audio -> int16 PCM, clipped first so that out-of-range samples saturate instead of wrapping."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def stream_cache_bytes(cfg: ModelConfig, dtype: torch.dtype, seconds: float) -> int:
    """Estimator keys/values a stream of `seconds` keeps: per mel frame, every CFM step's transformer blocks hold
    keys and values for both CFG branches (2.3 MB per frame at full size in fp16, 115 MB per second of audio)."""
    est = cfg.flow.cfm.estimator
    blocks = (2 * len(est.channels) + est.num_mid_blocks) * est.n_blocks
    per_frame = cfg.flow.cfm.n_timesteps * blocks * 2 * 2 * est.num_heads * est.attention_head_dim
    frames = seconds * cfg.token_frame_rate * cfg.token_mel_ratio
    return int(per_frame * frames * torch.tensor([], dtype=dtype).element_size())


def stream_capacity(cfg: ModelConfig, dtype: torch.dtype, free_bytes: int, seconds: float = 30.0,
                    copies: int = 4) -> int:
    """Streams that fit in `free_bytes` if each runs `seconds` long; a step holds a stream's cache up to three
    times (the kept batch, the graph's static buffer, the extended copy out of it), plus room for fragmentation."""
    return max(1, int(free_bytes // (copies * stream_cache_bytes(cfg, dtype, seconds))))


class DecodeEngine:
    """max_active_streams: streams holding a flow cache at once; later ones wait (their tokens queue up) until one
    finishes, so a burst of streams is served late rather than run out of GPU memory. None: on CUDA, sized from the
    free memory after loading (stream_capacity); unbounded on the CPU."""

    def __init__(self, model_cfg: ModelConfig, device: str | torch.device = "cpu", max_batch_size: int = 16,
                 hop_policy: HopPolicy = HopPolicy(), dtype: torch.dtype = torch.float32,
                 use_cuda_graph: bool = True, load_trt: bool = False, max_active_streams: int | None = None):
        self.cfg = model_cfg
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.hop_policy = hop_policy
        self.dtype = dtype
        self.t2w = Token2Wav(model_cfg, self.device)
        # the flow runs in `dtype`; HiFT stays in float32 (its source phases and iSTFT need the precision)
        self.flow = self.t2w.flow.to(dtype)
        self.hift = self.t2w.hift
        self.requests: OrderedDict[str, DecodeRequest] = OrderedDict()  # least recently served first
        self.flow_batches: list[FlowBatch] = []
        if self.device.type == "cuda":
            self._init_runners(use_cuda_graph, load_trt)
            if max_active_streams is None:
                free_bytes, _ = torch.cuda.mem_get_info(self.device)
                max_active_streams = stream_capacity(model_cfg, dtype, int(0.8 * free_bytes))
        self.max_active_streams = max_active_streams

    def _init_runners(self, use_cuda_graph: bool, load_trt: bool) -> None:
        """Streamed chunks replay CUDA graphs of the estimator and of HiFT's synthesis (eager when off); whole
        utterances go to TensorRT if asked and available, else to the same graphs/eager path."""
        self.hift.runner = HiFTGraphs(self.hift) if use_cuda_graph else None
        estimator = self.flow.decoder.estimator
        runner = EstimatorGraphs(estimator) if use_cuda_graph else None
        if load_trt:
            from light_tts.decode.trt import load_trt_estimator
            runner = load_trt_estimator(self.cfg, estimator, self.dtype, fallback=runner or estimator)
        self.flow.decoder.runner = runner

    # ---- API of the decode process ----

    def add_request(self, req_id: str, prompt: Prompt, seed: int, stream: bool, speed: float = 1.0) -> None:
        p_tok, p_mel, emb = prompt_tensors(prompt, self.device)
        schedule = ChunkSchedule(self.hop_policy, first_hop_pad(p_tok.shape[1], self.cfg.chunk_size),
                                 self.cfg.flow.pre_lookahead_len)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        req = DecodeRequest(req_id, stream, speed, schedule, p_tok, flow_state=None, generator=generator)
        try:
            if stream and speed != 1.0:
                raise ValueError("speed change is only supported for non-stream requests")
            req.flow_state = self.flow.stream_start(p_tok, p_mel.to(self.dtype), emb.to(self.dtype))
        except Exception as e:  # reported by the next step, like any other failure of this request
            req.error = f"{type(e).__name__}: {e}"
        self.requests[req_id] = req

    def push_tokens(self, req_id: str, tokens: list[int], is_last: bool) -> None:
        req = self.requests.get(req_id)
        if req is None:  # aborted or failed already
            return
        req.schedule.tokens.extend(tokens)
        req.is_last = req.is_last or is_last

    def abort(self, req_id: str) -> None:
        self.requests.pop(req_id, None)

    def has_work(self) -> bool:
        return any(r.error is not None or r.next_job() is not None for r in self.requests.values())

    def num_active(self) -> int:
        return len(self.requests)

    @torch.inference_mode()
    def step(self) -> list[AudioOutput]:
        """One chunk for each of up to max_batch_size ready requests (least recently served first)."""
        outputs = [self._fail(r, r.error) for r in list(self.requests.values()) if r.error is not None]
        for batch in [b for b in self.flow_batches if not all(self.requests.get(r.req_id) is r for r in b.reqs)]:
            self._release(batch)  # a member finished, failed or was aborted: its rows are dead weight
        jobs = []
        num_streaming = sum(1 for r in self.requests.values() if r.stream and r.schedule.offset > 0)
        for req in list(self.requests.values()):
            job = req.next_job()
            if job is None or len(jobs) >= self.max_batch_size:
                continue
            if job.streaming and job.is_first and not job.finalize:
                if self.max_active_streams is not None and num_streaming >= self.max_active_streams:
                    continue  # waits, least recently served first, until a stream finishes
                num_streaming += 1
            self.requests.move_to_end(req.req_id)
            if job.finalize and not req.schedule.tokens:  # no speech token at all (e.g. an empty sentence)
                self.requests.pop(req.req_id)
                outputs.append(AudioOutput(req.req_id, np.zeros(0, dtype=np.float32), finished=True))
                continue
            jobs.append(job)
        jobs = self._run_grouped(jobs, ChunkJob.flow_key, self._flow_pass, outputs)
        jobs = self._run_grouped(jobs, ChunkJob.hift_key, self._hift_pass, outputs)
        outputs.extend(self._emit(job) for job in jobs)
        return outputs

    # ---- batched passes ----

    def _run_grouped(self, jobs: list[ChunkJob], key, run, outputs: list[AudioOutput]) -> list[ChunkJob]:
        """Runs `run` on each group of equal-key jobs; a failing group is retried job by job so that only the
        failing request fails (states are committed only after a pass succeeds). Returns the jobs that ran."""
        groups = defaultdict(list)
        for job in jobs:
            groups[key(job)].append(job)
        done = []
        for group in groups.values():
            try:
                done.extend(run(group))
            except Exception as e:
                if len(group) > 1:
                    for job in group:
                        done.extend(self._run_grouped([job], key, run, outputs))
                    continue
                logger.exception("decode of request %s failed", group[0].req.req_id)
                outputs.append(self._fail(group[0].req, f"{type(e).__name__}: {e}"))
        return done

    def _flow_pass(self, jobs: list[ChunkJob]) -> list[ChunkJob]:
        """Speech tokens -> mel for jobs of one flow key; updates their flow states."""
        first = jobs[0]
        num_new = len(first.tokens)
        if first.finalize and not first.is_first and num_new == 0:  # the stream ended on a chunk boundary
            for job in jobs:
                job.mel = torch.zeros(1, self.cfg.flow.output_size, 0, device=self.device)
            return jobs
        tokens = torch.tensor([job.tokens for job in jobs], dtype=torch.int32, device=self.device)
        reqs = [job.req for job in jobs]
        kept, state = self._batched_flow_state(reqs)
        mel = self.flow.chunk_mel(tokens, first.finalize, state, first.streaming).float()  # (B, 80, frames)
        if kept is not None:  # committed only now that the pass succeeded
            kept.state = state
        elif len(reqs) > 1:
            self.flow_batches.append(FlowBatch(reqs, state))
            for r, req in enumerate(reqs):
                req.flow_row = r
                # the request's own caches are superseded by its row: drop them, keep speaker and prompt
                req.flow_state = replace(req.flow_state, encoder=None, estimator=[], num_pad=None)
        ratio = self.cfg.token_mel_ratio
        for r, job in enumerate(jobs):
            row = mel[r:r + 1, :, job.req.num_prompt_tokens * ratio:] if job.is_first else mel[r:r + 1]
            if job.req.speed != 1.0:
                row = F.interpolate(row, size=int(row.shape[2] / job.req.speed), mode="linear")
            job.mel = row
        return jobs

    def _batched_flow_state(self, reqs: list[DecodeRequest]) -> tuple[FlowBatch | None, FlowStreamState]:
        """The flow state of these requests as one batch: a shallow copy of the kept batch of exactly these
        requests (returned too; a failing pass leaves it intact), else their states stacked, after releasing any
        kept batch that holds one of them."""
        for batch in self.flow_batches:
            if len(batch.reqs) == len(reqs) and all(a is b for a, b in zip(batch.reqs, reqs)):
                return batch, replace(batch.state)
        ids = {id(req) for req in reqs}
        for batch in [b for b in self.flow_batches if any(id(req) in ids for req in b.reqs)]:
            self._release(batch)
        return None, stack_flow_states([req.flow_state for req in reqs], self.cfg.token_mel_ratio)

    def _release(self, batch: FlowBatch) -> None:
        """Gives each live request of a kept batch its row back as a single-request state (views)."""
        self.flow_batches.remove(batch)
        b = len(batch.reqs)
        pads = [0] * b if batch.state.num_pad is None else batch.state.num_pad.tolist()
        for r, (req, pad) in enumerate(zip(batch.reqs, pads)):
            if self.requests.get(req.req_id) is req:
                req.flow_state = split_row(batch.state, req.flow_state, r, b, pad, self.cfg.token_mel_ratio)
            req.flow_row = None

    def _hift_pass(self, jobs: list[ChunkJob]) -> list[ChunkJob]:
        """mel -> audio for jobs of one HiFT key; updates their overlap states."""
        state = stack_hift_states([job.req.hift_state for job in jobs])
        mel = torch.cat([job.mel for job in jobs])
        generators = [job.req.generator for job in jobs]
        audio = hift_stream_chunk(self.hift, state, mel, jobs[0].finalize, generator=generators)
        for r, (job, hift_state) in enumerate(zip(jobs, split_hift_state(state, len(jobs)))):
            job.req.hift_state = hift_state
            job.audio = audio[r]
        return jobs

    # ---- outputs ----

    def _emit(self, job: ChunkJob) -> AudioOutput:
        req = job.req
        if job.finalize:
            self.requests.pop(req.req_id, None)
        else:
            req.schedule.advance()
        return AudioOutput(req.req_id, job.audio.float().cpu().numpy(), finished=job.finalize)

    def _fail(self, req: DecodeRequest, error: str) -> AudioOutput:
        self.requests.pop(req.req_id, None)
        return AudioOutput(req.req_id, np.zeros(0, dtype=np.float32), finished=True, error=error)
