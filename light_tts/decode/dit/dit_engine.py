"""The decode engine for CosyVoice3 (the family's decode_engine): DecodeEngine's scheduling, admission, paged pool,
shared voice prefixes, fp8 pages and flow CUDA graphs, with CosyVoice3's parts in place of CosyVoice2's: the DiT
flow (paged_dit.py over dit_cache.py's pool) and the causal HiFT streamed through a window of recent frames
(models/cosyvoice3/hift/streaming.py), chunks of equal window shape batched across streams.

Every request gets the audio of its one-request reference (the family's token2wav session for streams, offline
otherwise) to float rounding; the final chunk of a stream is block-causal from the cache, as the CosyVoice2 engine
does (upstream recomputes it with full attention: docs/model.md).
"""

from __future__ import annotations

import logging

import torch

from light_tts.decode.dit.dit_cache import DiTCache, DiTCacheShape
from light_tts.decode.dit.hift_graphs import capture_hift_graphs
from light_tts.decode.dit.paged_dit import PagedDiT
from light_tts.decode.engine import DecodeEngine, StepJob
from light_tts.decode.engine_setup import HIFT_MAX_ROWS, FlowParts, is_on
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice3.flow import DiTFlow
from light_tts.models.cosyvoice3.hift import CausalHiFT
from light_tts.models.cosyvoice3.hift.streaming import CausalVocoder, HiFTStream, new_stream, vocode, window_frames
from light_tts.token2wav import Token2Wav

logger = logging.getLogger(__name__)


def cosyvoice3_token2wav(cfg: ModelConfig, device: str | torch.device = "cpu") -> Token2Wav:
    """CosyVoice3's one-request codec: token2wav's sessions around its DiT flow and causal HiFT."""
    flow = DiTFlow.from_checkpoint(cfg.flow, cfg.path("flow.pt"))
    hift = CausalHiFT.from_checkpoint(cfg.hift, cfg.flow, cfg.path("hift.pt"))
    return Token2Wav(cfg, device, flow=flow, vocoder=CausalVocoder(hift))


class DiTDecodeEngine(DecodeEngine):
    def make_token2wav(self, model_cfg: ModelConfig) -> Token2Wav:
        return cosyvoice3_token2wav(model_cfg, self.device)

    def flow_parts(self) -> FlowParts:
        return FlowParts(DiTCacheShape.from_config(self.cfg.flow), DiTCache, PagedDiT)

    def new_vocoder_state(self) -> HiFTStream:
        return new_stream(self.hift)

    def chunk_frames(self) -> tuple[list[int], list[int]]:
        """Mel frames a non-final chunk brings: (each first chunk's, one per alignment pad or the short first hop;
        each later chunk's of the hop policy)."""
        ratio, chunk = self.cfg.token_mel_ratio, self.cfg.chunk_size
        first_hops = [self.limits.first_hop_tokens] if self.limits.first_hop_tokens else []
        first_hops = first_hops or [self.hop_policy.first + pad for pad in range(chunk)]
        hops, hop = set(), self.hop_policy.next_hop(self.hop_policy.first)
        while hop not in hops:  # the policy's hops after the first, up to the one it repeats
            hops.add(hop)
            hop = self.hop_policy.next_hop(hop)
        return [ratio * h for h in first_hops], [ratio * h for h in sorted(hops)]

    def capture_vocoder_graphs(self) -> None:
        """The causal HiFT's passes past the phase accumulation, for every middle chunk shape at every row bucket
        up to HIFT_MAX_ROWS and every first chunk shape up to FIRST_CHUNK_ROWS (hift_graphs.py)."""
        self.hift.runner = capture_hift_graphs(self.hift, *self.chunk_frames(), min(self.max_batch_size, HIFT_MAX_ROWS))

    def vocoder_peak_pass(self) -> None:
        """The largest HiFT batch: HIFT_MAX_ROWS chunks of the longest window (a first chunk, or a later chunk with
        its margin), final (the whole window is decoded)."""
        first, middle = self.chunk_frames()
        lookahead = self.cfg.token_mel_ratio * self.cfg.flow.pre_lookahead_len
        frames = max(max(first), window_frames(self.hift, max(middle), False) + self.hift.f0_predictor.lookahead)
        with torch.inference_mode():
            mel = torch.zeros(HIFT_MAX_ROWS, self.hift.cfg.in_channels, frames + lookahead, device=self.device)
            self.hift.inference(mel)

    def make_vocoder_stage(self) -> CausalHiFTStage:
        """The causal HiFT through each stream's window, its convolution stack in fp16 with `hift_half` (the GPU
        default: the f0 predictor stays float64, the source, STFT and iSTFT float32). CosyVoice2's other hot-path
        variants do not apply: its noise comes from fixed tables, and its chunks are vocoded at once."""
        if is_on(self.limits.hift_half, self.device):
            self.hift.set_conv_dtype(torch.float16)
        asked = [
            name
            for name in ("fused_flow", "keyed_noise", "overlap_hift")
            if is_on(getattr(self.limits, name), self.device)
        ]
        if asked:
            logger.info(
                "CosyVoice3 decode: the hot-path variants %s are CosyVoice2's and not used here (the DiT's own "
                "fused row kernels, fixed noise tables, HiFT vocoded at once)",
                ", ".join(asked),
            )
        return CausalHiFTStage(self.hift, self._fail)


class CausalHiFTStage:
    """The decode engine's vocoder stage for the causal HiFT (engine.make_vocoder_stage's interface): nothing is
    deferred, so has_pending is always False, drop has nothing to drop and nothing overlaps the next flow pass."""

    overlap = False

    def __init__(self, hift: CausalHiFT, fail):
        self.hift, self.fail = hift, fail

    def has_pending(self) -> bool:
        return False

    def drop(self, req_id: str) -> None:
        pass

    def vocode(self, jobs: list[StepJob], outputs: list) -> list[StepJob]:
        """mel -> audio through each stream's vocoder window, rows of equal window shape as one batch of at most
        HIFT_MAX_ROWS (the rows the decode warm-up sized the memory for: activations grow with rows, and a step may
        hold --decode_max_batch_size chunks); a failing batch is retried row by row, so that only the failing
        request fails (states move only after a pass)."""
        done = []
        for finalize in (False, True):
            rows = [job for job in jobs if job.finalize == finalize]
            for group in (rows[i : i + HIFT_MAX_ROWS] for i in range(0, len(rows), HIFT_MAX_ROWS)):
                done += self._vocode_or_fail(group, finalize, outputs)
        return done

    def _vocode_or_fail(self, group: list[StepJob], finalize: bool, outputs: list) -> list[StepJob]:
        try:
            return self._vocode(group, finalize)
        except Exception as e:
            if len(group) == 1:
                self._fail_job(group[0], e, outputs)
                return []
        done = []
        for job in group:
            try:
                done += self._vocode([job], finalize)
            except Exception as e:
                self._fail_job(job, e, outputs)
        return done

    def _vocode(self, jobs: list[StepJob], finalize: bool) -> list[StepJob]:
        states = [_copy(job.req.hift_state) for job in jobs]
        audio = vocode(self.hift, states, [job.mel for job in jobs], finalize)
        for job, state, samples in zip(jobs, states, audio):
            job.req.hift_state, job.audio = state, samples
        return jobs

    def _fail_job(self, job: StepJob, error: Exception, outputs: list) -> None:
        logger.error("HiFT of request %s failed: %s", job.req.req_id, error, exc_info=error)
        outputs.append(self.fail(job.req, f"{type(error).__name__}: {error}"))


def _copy(stream: HiFTStream) -> HiFTStream:
    """A shallow copy to advance (the tensors are replaced, never written in place): the request's own state stays as
    it was until its batch succeeded."""
    return HiFTStream(**vars(stream))
