"""The decode engine of an Orpheus model: each request's token ids -> frames -> SNAC windows -> 24 kHz audio,
windows of all streams batched in one decode per step (snac_runner.py).

When a step runs (`_should_step`): at once for a stream's first window (time to first audio) and for a request
whose frames are all in; otherwise when the ready windows would fill a batch (as many as the streams, at most
max_batch_size), or when a stream's listener is about to run dry (its deadline within twice the predicted step).
Until then the windows wait and gather: a window is 85 ms of audio and costs about as much alone as in a batch of
ten, so decoding each one the moment its frame arrives (as the first version did: 5.6 windows a step on average at
~34 streams, the GPU busy half the time beside the LLM) spends the GPU that the LLM's steps need. One stream
alone never waits (its one ready window fills its batch). A step takes every ready window, several of a stream in
a row when it has them: urgent streams first, then first windows, then the others by deadline, non-stream
requests last.

A request's audio is a function of its ids and seed only: its windows are the reference's (frames.py), each
decoded with noise from (seed, the window's end frame), so it is the same alone, in any batch and offline
(orpheus_pipeline.py), whichever step decodes it. No page pool: a stream holds only its frames and the last
window's kept tail.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from light_tts.decode.engine import AudioOutput, EngineStats
from light_tts.decode.scheduler import StepTimeModel
from light_tts.decode.snac.snac_runner import SNACRunner
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
    def __init__(
        self,
        cfg: OrpheusConfig,
        device: str | torch.device = "cpu",
        max_batch_size: int = 64,
        use_cuda_graph: bool = True,
        dtype: torch.dtype = torch.float32,
        deadline_margin_s: float = 0.1,
        clock=time.monotonic,
        model: SNACDecoder | None = None,
        fused: bool = False,
    ):
        """fused: decode with the fused kernels (snac_fused.py; float32, on CUDA or under TRITON_INTERPRET=1)."""
        self.cfg, self.device, self.clock = cfg, torch.device(device), clock
        self.frame_ids = FrameIds(cfg.tokens.first_audio, cfg.tokens.codebook_size, cfg.tokens.frame_len)
        self.samples_per_frame, self.sample_rate = cfg.snac.samples_per_frame, cfg.sample_rate
        self.model = (model or load_snac(cfg)).to(self.device)
        self.max_batch_size, self.dtype, self.use_cuda_graph = max_batch_size, dtype, use_cuda_graph
        self.fused = fused
        self.runner: SNACRunner | None = self._runner()
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

    def add_request(
        self,
        req_id: str,
        prompt=None,
        seed: int = 0,
        stream: bool = True,
        speed: float = 1.0,
        max_tokens: int | None = None,
        prefix_key: str | None = None,
        audio_start: float | None = None,
        samples_sent: int = 0,
        min_tokens: int = 0,
    ) -> None:
        """audio_start / samples_sent: playback already under way (a later sentence of the same request). A voice is
        a name in the LLM's prompt: no prompt audio, no shared prefix; max_tokens and min_tokens need no
        reservation here (a stream holds only its frames)."""
        s = SNACStream(
            req_id,
            seed,
            stream,
            FrameParser(self.frame_ids),
            self.clock(),
            audio_start=audio_start,
            samples_sent=samples_sent,
        )
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
            s.error is not None or self._is_ready(s) for s in self.requests.values()
        )

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
        """The ready windows of every stream decoded together, when `_should_step` says it is time; streams that
        ended emit their kept tail at once."""
        started = now = self.clock()
        outputs = [self._fail(s) for s in list(self.requests.values()) if s.error is not None]
        audio: dict[str, list[np.ndarray]] = {}
        ready = []
        for s in self.requests.values():
            if not self._is_ready(s):
                continue
            tail = s.schedule.tail_frames()
            if tail is not None:  # ended after its last window: the kept frames follow, no decode
                audio.setdefault(s.req_id, []).append(s.tail)
            else:
                ready.append(s)
        windows = []
        if ready and self._should_step(ready, now):
            windows = self._take_windows(ready, now, audio)
        if windows:
            self._decode(windows, audio)
            self.step_model.observe(len(windows), self.clock() - started)
            self.step_seconds.append(self.clock() - started)
        self.stats.streams_active = len(self.requests)
        outputs += [self._emit(req_id, chunks) for req_id, chunks in audio.items()]
        if outputs or windows:
            self.stalled_until = -math.inf
        else:  # holding: step again when the first waiting stream comes due (or when tokens arrive)
            self.stalled_until = max(now + WAIT_POLL_S, self._next_due(ready)) if ready else started + WAIT_POLL_S
        return outputs

    def _horizon_s(self, num_windows: int) -> float:
        """How close to its deadline a stream may wait: twice the predicted step, and a poll."""
        return 2 * self.step_model.predict(min(num_windows, self.max_batch_size)) + WAIT_POLL_S

    def _should_step(self, ready: list[SNACStream], now: float) -> bool:
        if any(s.schedule.is_last or (s.is_stream and s.audio_start is None) for s in ready):
            return True  # a first window (time to first audio), or a request whose frames are all in
        num_windows = sum(s.schedule.num_ready() for s in ready)
        if num_windows >= min(self.max_batch_size, len(self.requests)):
            return True  # a full batch
        return self._next_due(ready) - now <= 0

    def _next_due(self, ready: list[SNACStream]) -> float:
        """When the first ready stream's deadline comes within the horizon (inf: none has a listener yet)."""
        horizon = self._horizon_s(sum(s.schedule.num_ready() for s in ready))
        deadlines = [
            s.deadline(self.margin_s, self.sample_rate) for s in ready if s.is_stream and s.audio_start is not None
        ]
        return min(deadlines) - horizon if deadlines else math.inf

    def _take_windows(
        self, ready: list[SNACStream], now: float, audio: dict[str, list[np.ndarray]]
    ) -> list[tuple[str, Window]]:
        """Up to max_batch_size windows, round by round one more of each stream in priority order."""
        horizon = self._horizon_s(sum(s.schedule.num_ready() for s in ready))

        def rank(s: SNACStream) -> tuple[int, float]:
            if not s.is_stream:
                return 3, s.arrival
            if s.audio_start is None:
                return 1, s.arrival
            deadline = s.deadline(self.margin_s, self.sample_rate)
            return (0 if deadline - now <= horizon else 2), deadline

        order = sorted(ready, key=rank)
        taken: list[tuple[str, Window]] = []
        while len(taken) < self.max_batch_size:
            more = [s for s in order if s.schedule.num_ready()]
            if not more:
                break
            for s in more[: self.max_batch_size - len(taken)]:
                window = s.schedule.next_window()
                if window is None:  # an ended stream with no frames at all
                    audio.setdefault(s.req_id, [])
                else:
                    taken.append((s.req_id, window))
        return taken

    def _fail(self, s: SNACStream) -> AudioOutput:
        del self.requests[s.req_id]
        return AudioOutput(s.req_id, np.zeros(0, np.float32), True, s.error, "bad_request")

    def _decode(self, windows: list[tuple[str, Window]], audio: dict[str, list[np.ndarray]]) -> None:
        """Decode the windows in groups of equal length (full windows, or whole short streams); a stream's
        windows keep their order, so its audio and its kept tail come out in frame order."""
        by_len: dict[int, list[tuple[str, Window]]] = {}
        for req_id, w in sorted(windows, key=lambda item: item[1].end):
            by_len.setdefault(w.num_frames, []).append((req_id, w))
        spf = self.samples_per_frame
        for group in by_len.values():
            frames = np.array([self.requests[r].frames[w.start : w.end] for r, w in group], dtype=np.int64)
            out = self.runner.decode(frames, [self.requests[r].seed for r, _ in group], [w.end for _, w in group])
            out = out.cpu().numpy()
            for row, (r, w) in enumerate(group):
                s, a = self.requests[r], w.start
                audio.setdefault(r, []).append(out[row, (w.emit_from - a) * spf : (w.emit_to - a) * spf].copy())
                s.tail = out[row, (w.emit_to - a) * spf : (w.keep_to - a) * spf].copy()

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
        self.runner = self._runner()

    def _runner(self) -> SNACRunner:
        return SNACRunner(
            self.model, self.device, self.max_batch_size, self.use_cuda_graph, self.dtype, use_fused=self.fused
        )

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
        slacks = [
            s.deadline(self.margin_s, self.sample_rate) - now
            for s in self.requests.values()
            if s.is_stream and s.audio_start is not None
        ]
        return int(1000 * min(slacks)) if slacks else 1 << 40
