"""Token-to-waveform for one request: flow (speech tokens -> mel) then the vocoder (mel -> 24 kHz audio), whole or
streamed; CosyVoice2's flow and HiFT by default, another family's passed in (its family's token2wav()).

Streaming follows upstream CosyVoice2's schedule: the first hop is 25 tokens plus the pad that aligns the prompt
and the first hop to a multiple of 25, later hops follow the hop policy, and every non-final chunk waits for 3
lookahead tokens. The flow keeps a per-request cache, so a chunk costs the same wherever it falls; its non-final
chunks equal upstream's full-prefix recompute. Upstream runs the final chunk with full attention over the whole
utterance; `exact_final=True` does that too (cost grows with length), the default finishes chunk-causally from
the cache (constant cost; see docs/model.md for the measured difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from light_tts.frontend.prompt import Prompt
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.models.cosyvoice2.hift import HiFT
from light_tts.models.cosyvoice2.hift.streaming import HiFTStreamState, hift_stream_chunk


@dataclass(frozen=True)
class HopPolicy:
    """Tokens per streamed chunk after the first: `fixed` keeps `first`, `growing` doubles up to `max_hop`."""

    kind: str = "growing"
    first: int = 25
    max_hop: int = 100

    def __post_init__(self):
        if self.kind not in ("fixed", "growing"):
            raise ValueError(f"hop policy must be 'fixed' or 'growing', not {self.kind!r}")
        if self.first % 25 or self.max_hop % 25 or self.first <= 0:
            raise ValueError("hops must be positive multiples of 25 tokens (the flow's chunk size)")

    def next_hop(self, hop: int) -> int:
        return hop if self.kind == "fixed" else min(self.max_hop, hop * 2)


def first_hop_pad(num_prompt_tokens: int, chunk: int = 25) -> int:
    """Tokens added to the first hop so that prompt + first hop ends on a chunk boundary."""
    return -num_prompt_tokens % chunk


@dataclass
class ChunkSchedule:
    """Which received tokens each streamed chunk covers; pure bookkeeping shared by Token2WavSession and the
    batched decode engine. `pad` is first_hop_pad of the prompt, `lookahead` the flow's pre-lookahead tokens."""

    hop_policy: HopPolicy
    pad: int
    lookahead: int
    tokens: list[int] = field(default_factory=list)
    offset: int = 0  # tokens already turned into audio
    # a short first hop (the engine's --first_hop_tokens; None: upstream's hop + pad): the first chunk then ends
    # off the chunk grid, and the second one ends on the first boundary after it (see DecodeEngine._job)
    first_hop: int | None = None
    base_hop: int = field(init=False)  # the policy's hop for the next chunk, before the first chunk's pad

    def __post_init__(self):
        self.base_hop = self.hop_policy.first

    @property
    def hop(self) -> int:
        """Tokens the next non-final chunk turns into audio: the first one also carries the alignment pad."""
        if self.first_hop is not None and self.offset == 0:
            return self.first_hop
        if self.first_hop is not None and self.offset == self.first_hop:
            realign = (self.pad - self.first_hop) % 25  # to the first chunk boundary after the short first hop
            if realign:
                return realign
        return self.base_hop + (self.pad if self.offset == 0 else 0)

    def ready(self) -> bool:
        """True when a non-final chunk can be computed (its hop and lookahead tokens have arrived)."""
        return len(self.tokens) >= self.offset + self.hop + self.lookahead

    def chunk_tokens(self, finalize: bool) -> list[int]:
        """The next chunk's tokens: hop + lookahead, or every remaining token for the final chunk."""
        end = len(self.tokens) if finalize else self.offset + self.hop + self.lookahead
        return self.tokens[self.offset : end]

    def advance(self) -> None:
        """A non-final chunk was emitted."""
        is_short = self.first_hop is not None and self.offset in (0, self.first_hop) and self.hop != self.base_hop
        self.offset += self.hop
        if not is_short:  # the short first hop and its realignment leave the policy's hops as they were
            self.base_hop = self.hop_policy.next_hop(self.base_hop)


def prompt_tensors(prompt: Prompt, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(speech tokens [1,P] int32, mel [1,2P,80], speaker embedding [1,192]) on `device`."""
    tokens = torch.as_tensor(prompt.speech_tokens, dtype=torch.int32, device=device)[None]
    mel = torch.as_tensor(prompt.mel, dtype=torch.float32, device=device)[None]
    emb = torch.as_tensor(prompt.embedding, dtype=torch.float32, device=device)[None]
    return tokens, mel, emb


class HiFTVocoder:
    """CosyVoice2's HiFT as token2wav's vocoder: per-call source noise from the request's seeded generator, and
    upstream's streaming overlap (models/cosyvoice2/hift/streaming.py). Another family passes its own vocoder with
    the same three methods (CosyVoice3: models/cosyvoice3/hift/streaming.CausalVocoder)."""

    def __init__(self, hift: HiFT):
        self.hift = hift

    def whole(self, mel: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=mel.device).manual_seed(seed)
        speech, _ = self.hift.inference(mel, torch.zeros(1, 1, 0, device=mel.device), generator=gen)
        return speech

    def new_stream(self, seed: int, device: torch.device) -> tuple[HiFTStreamState, torch.Generator]:
        return HiFTStreamState(), torch.Generator(device=device).manual_seed(seed)

    def chunk(self, stream: tuple[HiFTStreamState, torch.Generator], mel: torch.Tensor, finalize: bool) -> torch.Tensor:
        state, generator = stream
        return hift_stream_chunk(self.hift, state, mel, finalize=finalize, generator=generator)


class Token2Wav:
    """The flow and vocoder of one model, shared by every request's session. A family other than CosyVoice2 passes
    its own flow (a ChunkedFlow) and vocoder."""

    def __init__(self, cfg: ModelConfig, device: str | torch.device = "cpu", flow=None, vocoder=None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.flow = (flow or Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt"))).to(self.device).eval()
        self.vocoder = vocoder or HiFTVocoder(HiFT.from_checkpoint(cfg.hift, cfg.path("hift.pt")))
        self.hift = self.vocoder.hift.to(self.device).eval()

    @torch.inference_mode()
    def offline(self, tokens: list[int], prompt: Prompt, seed: int, speed: float = 1.0) -> np.ndarray:
        """Whole-utterance synthesis (upstream's non-stream path): float32 audio at 24 kHz."""
        p_tok, p_mel, emb = prompt_tensors(prompt, self.device)
        token = torch.tensor([tokens], dtype=torch.int32, device=self.device)
        mel = self.flow.inference(token, p_tok, p_mel, emb, streaming=False, finalize=True)
        if speed != 1.0:
            mel = F.interpolate(mel, size=int(mel.shape[2] / speed), mode="linear")
        return self.vocoder.whole(mel, seed)[0].float().cpu().numpy()

    def session(
        self, prompt: Prompt, seed: int, hop_policy: HopPolicy = HopPolicy(), exact_final: bool = False
    ) -> Token2WavSession:
        return Token2WavSession(self, prompt, seed, hop_policy, exact_final)


class Token2WavSession:
    """One request's streaming state: tokens received, flow cache, vocoder stream; emits audio chunk by chunk."""

    def __init__(self, t2w: Token2Wav, prompt: Prompt, seed: int, hop_policy: HopPolicy, exact_final: bool):
        self.t2w, self.exact_final = t2w, exact_final
        self.p_tok, self.p_mel, self.emb = prompt_tensors(prompt, t2w.device)
        self.schedule = ChunkSchedule(
            hop_policy, first_hop_pad(self.p_tok.shape[1], t2w.cfg.chunk_size), t2w.cfg.flow.pre_lookahead_len
        )
        self.flow_state = t2w.flow.stream_start(self.p_tok, self.p_mel, self.emb)
        self.vocoder_stream = t2w.vocoder.new_stream(seed, t2w.device)
        self.finished = False

    @torch.inference_mode()
    def feed(self, tokens: list[int]) -> list[np.ndarray]:
        """Adds tokens; returns the audio chunks that became ready (possibly none)."""
        self.schedule.tokens.extend(tokens)
        out = []
        while self.schedule.ready():
            out.append(self._chunk(finalize=False))
        return out

    @torch.inference_mode()
    def finish(self) -> np.ndarray:
        """The final chunk: every remaining token, no lookahead, the held-back audio tail included."""
        audio = self._chunk(finalize=True)
        self.finished = True
        return audio

    def _chunk(self, finalize: bool) -> np.ndarray:
        dev, sched = self.t2w.device, self.schedule
        new = torch.tensor([sched.chunk_tokens(finalize)], dtype=torch.int32, device=dev)
        if finalize and self.exact_final:
            everything = torch.tensor([sched.tokens], dtype=torch.int32, device=dev)
            mel = self.t2w.flow.inference(everything, self.p_tok, self.p_mel, self.emb, streaming=False, finalize=True)
            mel = mel[:, :, sched.offset * self.t2w.cfg.token_mel_ratio :]
        else:
            mel = self.t2w.flow.stream_chunk(self.flow_state, new, finalize=finalize)
        audio = self.t2w.vocoder.chunk(self.vocoder_stream, mel, finalize)
        if not finalize:
            sched.advance()
        return audio[0].float().cpu().numpy()
