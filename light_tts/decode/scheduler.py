"""Which chunks a decode step runs: playback deadlines, first audio first, non-stream work in spare capacity.

Pure CPU logic (no torch), unit-tested with simulated clocks. A stream's next chunk is due when its listener runs
out of audio (DecodeRequest.deadline: playback started when its first chunk left, minus a safety margin). Each
step is built in this order, within the step's row and token budget:

1. urgent chunks: streams that would run dry before the step after this one could serve them (deadline within
   twice the predicted time of a step carrying the pending first and due chunks), earliest deadline first;
   these keep every admitted stream on time;
2. first chunks of new streams (time to first audio), first come first served;
3. streams due within the fill horizon, earliest deadline first;
4. non-stream utterances, first come first served, only while the predicted step time stays within the slack of
   every stream (so they never make a stream stall);
5. streams ahead of their listeners, earliest deadline first, filling the step that runs anyway up to
   `target_step_s` (or a quarter past its length); with nothing else to do they run at once (about two chunks'
   worth), so the engine never idles while it has work, yet a far-ahead crowd never makes one step long enough
   to delay the next arrival's first audio.

A row larger than the step's token budget (a long non-stream utterance, or the recompute of a long stream that
was preempted) runs in a step of its own, so that nothing waits for ever for a step that could hold it. A
non-stream utterance held back for streams' slack longer than `max_hold_s` takes its turn anyway, right after the
urgent chunks (alone when it is that large), so that a busy stream load cannot starve it.

The step time is predicted by StepTimeModel, a linear fit of measured step times against the tokens in the pass.

Latency lane (`lane_step_s`, --latency_lane short_steps): while a stream's first chunk is on its way (its tokens
are being generated: `first_expected`) or rides in this step, early work (5) fills the step only up to
`lane_step_s`, and with nothing else to do the engine waits for it rather than starting a long step of early
chunks: the step in flight when the first chunk's tokens arrive is short, and so is the step that carries them.
Urgent and due chunks (1, 3) are taken as always, so no admitted stream runs dry for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Candidate:
    key: str
    is_stream: bool
    is_first: bool  # its listener has heard nothing yet
    deadline: float  # when its listener runs out of audio; -inf before the first chunk
    num_tokens: int  # what the chunk computes (its cost)
    arrival: float
    waited_s: float = 0.0  # how long it has been ready without running (non-stream: bounded by max_hold_s)


class StepTimeModel:
    """t(tokens) = base_s + per_token_s * tokens, fitted to measured steps with exponential forgetting."""

    def __init__(self, base_s: float = 0.02, per_token_s: float = 2e-5, decay: float = 0.95):
        self.base_s, self.per_token_s, self.decay = base_s, per_token_s, decay
        # weighted sums for least squares: n, x, y, xx, xy
        self._sums: tuple[float, float, float, float, float] | None = None

    def predict(self, num_tokens: int) -> float:
        return self.base_s + self.per_token_s * num_tokens

    def observe(self, num_tokens: int, seconds: float) -> None:
        d = self.decay
        n, sx, sy, sxx, sxy = self._sums or (0.0, 0.0, 0.0, 0.0, 0.0)
        n, sx, sy = d * n + 1, d * sx + num_tokens, d * sy + seconds
        sxx, sxy = d * sxx + num_tokens * num_tokens, d * sxy + num_tokens * seconds
        self._sums = (n, sx, sy, sxx, sxy)
        var = sxx / n - (sx / n) ** 2
        if n >= 2 and var > 1e-9 * max(1.0, (sx / n) ** 2):
            slope = (sxy / n - sx / n * sy / n) / var
            if slope > 0:
                self.per_token_s = slope
        self.base_s = max(0.0, sy / n - self.per_token_s * sx / n)


@dataclass(frozen=True)
class SchedulerConfig:
    max_rows: int  # chunks per step
    max_tokens: int  # tokens per step (the largest pass the flow runs at once)
    fill_horizon_s: float = 1.0  # streams due within this (beyond the urgent ones) run when budget allows
    target_step_s: float = 0.08  # with spare capacity, steps grow to about this long with early chunks
    lane_step_s: float | None = None  # latency lane: early work only up to this while a first chunk is near
    max_hold_s: float = 5.0  # a non-stream utterance held back longer runs even where it takes streams' slack


def urgent_before(candidates: list[Candidate], now: float, cfg: SchedulerConfig, model: StepTimeModel) -> float:
    """Streams due before this time are urgent: they run dry unless this step serves them. This step will carry the
    first chunks and the streams due soon; a stream left out waits for it and the next."""
    pending = sum(
        c.num_tokens for c in candidates if c.is_stream and (c.is_first or c.deadline <= now + cfg.fill_horizon_s)
    )
    return now + 2 * model.predict(min(cfg.max_tokens, pending))


def schedule(
    candidates: list[Candidate], now: float, cfg: SchedulerConfig, model: StepTimeModel, first_expected: bool = False
) -> list[Candidate]:
    """The chunks of the next step, in the order they were chosen. `first_expected`: a stream's first chunk is
    on its way (the latency lane keeps steps short meanwhile)."""
    chosen: list[Candidate] = []
    taken: set[str] = set()
    num_tokens = 0
    is_closed = False  # an oversized row runs alone

    def take(c: Candidate, max_step_s: float = math.inf) -> bool:
        nonlocal num_tokens, is_closed
        if is_closed or c.key in taken or len(chosen) >= cfg.max_rows:
            return False
        if num_tokens + c.num_tokens > cfg.max_tokens and (chosen or c.num_tokens <= cfg.max_tokens):
            return False
        if model.predict(num_tokens + c.num_tokens) > max_step_s:
            return False
        chosen.append(c)
        taken.add(c.key)
        num_tokens += c.num_tokens
        is_closed = c.num_tokens > cfg.max_tokens
        return True

    streams = sorted((c for c in candidates if c.is_stream and not c.is_first), key=lambda c: c.deadline)
    firsts = sorted((c for c in candidates if c.is_stream and c.is_first), key=lambda c: c.arrival)
    whole = sorted((c for c in candidates if not c.is_stream), key=lambda c: c.arrival)
    held = [c for c in whole if c.waited_s >= cfg.max_hold_s]
    if held and held[0].num_tokens > cfg.max_tokens:  # its turn came, and it can only run alone
        return [held[0]]
    urgent = urgent_before(candidates, now, cfg, model)
    for c in streams:  # 1. urgent
        if c.deadline <= urgent:
            take(c)
    for c in held:  # non-stream work held back too long: its turn
        take(c)
    for c in firsts:  # 2. first audio
        take(c)
    for c in streams:  # 3. due soon
        if c.deadline <= now + 2 * model.predict(num_tokens + c.num_tokens) + cfg.fill_horizon_s:
            take(c)
    # 4. non-stream: the step must end before every chosen stream's deadline, leave the next step time for the
    # streams left out, and stay short when it carries first chunks
    max_step_s = min(
        [c.deadline - now for c in chosen if c.is_stream and not c.is_first]
        + [(c.deadline - now) / 2 for c in streams if c.key not in taken]
        + [cfg.target_step_s for c in chosen if c.is_first]
        + [math.inf]
    )
    for c in whole:
        take(c, max_step_s=max_step_s)
    # 5. early work: fill the step that runs anyway up to the target (or a quarter longer than it already is);
    # with nothing else to do, the earliest-deadline streams run at once, so the engine never idles with work
    early = [c for c in streams if c.key not in taken]
    is_lane = cfg.lane_step_s is not None and (first_expected or any(c.is_first for c in chosen))
    if is_lane:
        limit = cfg.lane_step_s or 0.0
    elif chosen:
        limit = max(cfg.target_step_s, 1.25 * model.predict(num_tokens))
    else:
        limit = max(cfg.target_step_s, 2 * model.predict(early[0].num_tokens)) if early else 0.0
    for c in early:
        if not take(c, max_step_s=limit):
            break
    return chosen
