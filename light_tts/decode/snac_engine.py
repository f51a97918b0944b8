"""The decode engine of an Orpheus model: each request's token ids -> frames -> SNAC windows -> 24 kHz audio,
windows of all streams batched in one decode per step (snac_runner.py), chosen by playback deadline
(scheduler.schedule: first audio first, then the streams about to run dry).

A request's audio is a function of its ids and seed only: its windows are the reference's (frames.py), each
decoded with noise from (seed, the window's end frame), so it is the same alone, in any batch and offline
(orpheus_pipeline.py). No page pool: a stream holds only its frames and the last window's kept tail.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from light_tts.decode.engine import AudioOutput, EngineStats
from light_tts.decode.scheduler import Candidate, SchedulerConfig, StepTimeModel, schedule
from light_tts.decode.snac_runner import SNACRunner
from light_tts.models.orpheus.config import OrpheusConfig
from light_tts.models.orpheus.frames import FrameIds, FrameParser, Window, WindowSchedule
from light_tts.models.orpheus.snac import SNACDecoder

logger = logging.getLogger(__name__)
WAIT_POLL_S = 0.01  # a step that ran nothing (its streams far from their deadlines) is tried again this much later


@dataclass
class SNACStream:
    req_id: str
    seed: int
    is_stream: bool
    parser: FrameParser
    arrival: float
    frames: list[tuple[int, ...]] = field(default_factory=list)
    schedule: WindowSchedule = field(default_factory=WindowSchedule)
    tail: np.ndarray | None = None  # audio of the last decoded window past what it emitted
    audio_start: float | None = None  # when its first audio left (the listener's playback clock)
    samples_sent: int = 0
    error: str | None = None  # reported (and the stream dropped) by the next step

    def deadline(self, margin_s: float, sample_rate: int) -> float:
        """When its listener runs out of audio (-inf before its first audio)."""
        if self.audio_start is None:
            return -np.inf
        return self.audio_start + self.samples_sent / sample_rate - margin_s


def load_snac(cfg: OrpheusConfig) -> SNACDecoder:
    from light_tts.models.orpheus.config import SNAC_DIR
    from light_tts.models.weights import read_state_dict

    path = cfg.path(f"{SNAC_DIR}/pytorch_model.bin")
    return SNACDecoder.from_state_dict(cfg.snac, read_state_dict(path), str(path))


class SNACEngine:
    def __init__(self, cfg: OrpheusConfig, device: str | torch.device = "cpu", max_batch_size: int = 64,
                 use_cuda_graph: bool = True, dtype: torch.dtype = torch.float32, deadline_margin_s: float = 0.1,
                 clock=time.monotonic, model: SNACDecoder | None = None):
        self.cfg, self.device, self.clock = cfg, torch.device(device), clock
        self.frame_ids = FrameIds(cfg.tokens.first_audio, cfg.tokens.codebook_size, cfg.tokens.frame_len)
        self.samples_per_frame, self.sample_rate = cfg.snac.samples_per_frame, cfg.sample_rate
        self.model = (model or load_snac(cfg)).to(self.device)
        self.max_batch_size, self.dtype, self.use_cuda_graph = max_batch_size, dtype, use_cuda_graph
        self.runner: SNACRunner | None = SNACRunner(self.model, self.device, max_batch_size, use_cuda_graph, dtype)
        self.sched_cfg = SchedulerConfig(max_rows=max_batch_size, max_tokens=max_batch_size)
        self.step_model = StepTimeModel(base_s=0.005, per_token_s=1e-3)
        self.margin_s = deadline_margin_s
        self.requests: dict[str, SNACStream] = {}
        self.stats = EngineStats()  # no page pool: its page counts stay 0
        self.step_seconds: list[float] = []
        self.stalled_until = -math.inf  # the last step ran nothing: step again then, or when something changes
        # the decode process's latency lane (decode/engine.py): windows are the reference's, so there is none here
        self.first_expected = False  # set by the decode process, not read
        self.is_holding = False
        self.last_step_times: dict[str, float] = {}  # no flow and HiFT stages to stamp in a request's trace

    # ---- API of the decode process (decode/engine.py's) ----

    def add_request(self, req_id: str, prompt=None, seed: int = 0, stream: bool = True, speed: float = 1.0,
                    max_tokens: int | None = None, prefix_key: str | None = None, audio_start: float | None = None,
                    samples_sent: int = 0, min_tokens: int = 0) -> None:
        """audio_start / samples_sent: playback already under way (a later sentence of the same request). A voice is
        a name in the LLM's prompt: no prompt audio, no shared prefix; max_tokens and min_tokens need no
        reservation here (a stream holds only its frames)."""
        s = SNACStream(req_id, seed, stream, FrameParser(self.frame_ids), self.clock(), audio_start=audio_start,
                       samples_sent=samples_sent)
        if speed != 1.0:
            s.error = "this model speaks at its own pace: speed must be 1.0"
        self.requests[req_id] = s
        self.stalled_until = -math.inf

    def push_tokens(self, req_id: str, token_ids: list[int], is_last: bool) -> None:
        s = self.requests.get(req_id)
        if s is None:  # aborted or finished already
            return
        frames = s.parser.feed(token_ids)
        s.frames += frames
        s.schedule.add_frames(len(frames), is_last)
        self.stalled_until = -math.inf

    def abort(self, req_id: str) -> None:
        self.requests.pop(req_id, None)
        self.stalled_until = -math.inf

    def has_work(self) -> bool:
        """A step would do something now. After a step that ran nothing (every ready stream far from its
        deadline) the engine waits WAIT_POLL_S, or until tokens, a request or an abort arrive."""
        return self.clock() >= self.stalled_until and any(
            s.error is not None or self._is_ready(s) for s in self.requests.values())

    def wake_in_s(self) -> float | None:
        """Seconds until a stalled engine should step again by itself (None: only when something arrives)."""
        return None if math.isinf(self.stalled_until) else max(0.0, self.stalled_until - self.clock())

    def take_waits(self) -> list[tuple[str, str, str]]:
        """Nothing waits for memory here (no page pool)."""
        return []

    def room(self) -> int:
        """Streams it can take now (for the LLM's choice of decode process): by its measured capacity."""
        return max(0, self.capacity_streams() - len(self.requests))

    def num_active(self) -> int:
        return len(self.requests)

    # ---- one step ----

    def _is_ready(self, s: SNACStream) -> bool:
        sch, n = s.schedule, s.schedule.num_frames
        return not sch.is_done and (sch.next_end <= n or sch.is_last)

    @torch.inference_mode()
    def step(self) -> list[AudioOutput]:
        """One window of each chosen stream, decoded together; streams that ended emit their kept tail."""
        started = now = self.clock()
        outputs = [self._fail(s) for s in list(self.requests.values()) if s.error is not None]
        audio: dict[str, list[np.ndarray]] = {}
        candidates, windows = [], {}
        for s in self.requests.values():
            if not self._is_ready(s):
                continue
            tail = s.schedule.tail_frames()
            if tail is not None:  # ended after its last window: the kept frames follow, no decode
                audio.setdefault(s.req_id, []).append(s.tail)
                continue
            candidates.append(Candidate(s.req_id, s.is_stream, s.audio_start is None,
                                        s.deadline(self.margin_s, self.sample_rate), 1, s.arrival))
        for c in schedule(candidates, now, self.sched_cfg, self.step_model):
            s = self.requests[c.key]
            window = s.schedule.next_window()
            if window is not None:
                windows[c.key] = window
            else:  # an ended stream with no frames at all
                audio.setdefault(c.key, [])
        if windows:
            self._decode(windows, audio)
            self.step_model.observe(len(windows), self.clock() - started)
            self.step_seconds.append(self.clock() - started)
        self.stats.streams_active = len(self.requests)
        outputs += [self._emit(req_id, chunks) for req_id, chunks in audio.items()]
        self.stalled_until = -math.inf if outputs or windows else started + WAIT_POLL_S
        return outputs

    def _fail(self, s: SNACStream) -> AudioOutput:
        del self.requests[s.req_id]
        return AudioOutput(s.req_id, np.zeros(0, np.float32), True, s.error, "bad_request")

    def _decode(self, windows: dict[str, Window], audio: dict[str, list[np.ndarray]]) -> None:
        """Decode the windows in groups of equal length (full windows, or whole short streams)."""
        by_len: dict[int, list[str]] = {}
        for req_id, w in windows.items():
            by_len.setdefault(w.num_frames, []).append(req_id)
        spf = self.samples_per_frame
        for ids in by_len.values():
            frames = np.array([self.requests[r].frames[windows[r].start:windows[r].end] for r in ids],
                              dtype=np.int64)
            out = self.runner.decode(frames, [self.requests[r].seed for r in ids], [windows[r].end for r in ids])
            out = out.cpu().numpy()
            for row, r in enumerate(ids):
                w, s = windows[r], self.requests[r]
                a = w.start
                audio.setdefault(r, []).append(out[row, (w.emit_from - a) * spf:(w.emit_to - a) * spf].copy())
                s.tail = out[row, (w.emit_to - a) * spf:(w.keep_to - a) * spf].copy()

    def _emit(self, req_id: str, chunks: list[np.ndarray]) -> AudioOutput:
        s = self.requests[req_id]
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        if s.audio_start is None and len(pcm):
            s.audio_start = self.clock()
        s.samples_sent += len(pcm)
        finished = s.schedule.is_done
        if finished:
            del self.requests[req_id]
        return AudioOutput(req_id, pcm, finished)

    # ---- device and capacity ----

    def release(self) -> None:
        if self.requests:
            raise RuntimeError("release with requests in the engine")
        self.runner = None
        self.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reload(self) -> None:
        self.model.to(self.device)
        self.runner = SNACRunner(self.model, self.device, self.max_batch_size, self.use_cuda_graph, self.dtype)

    @property
    def is_released(self) -> bool:
        return self.runner is None

    def take_step_times(self) -> list[float]:
        out, self.step_seconds = self.step_seconds, []
        return out

    def capacity_streams(self) -> int:
        """Real-time streams this engine could hold by its measured step times: each needs sample_rate /
        samples_per_frame windows a second."""
        windows_per_s = self.sample_rate / self.samples_per_frame
        per_row = self.step_model.per_token_s * windows_per_s
        return max(0, int((1.0 - self.margin_s - self.step_model.base_s * windows_per_s) / per_row))

    def min_slack_ms(self) -> int:
        now = self.clock()
        slacks = [s.deadline(self.margin_s, self.sample_rate) - now for s in self.requests.values()
                  if s.is_stream and s.audio_start is not None]
        return int(1000 * min(slacks)) if slacks else 1 << 40
