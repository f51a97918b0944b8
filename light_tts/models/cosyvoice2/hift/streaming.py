"""Per-request HiFT streaming: mel chunks -> audio chunks with upstream CosyVoice2's overlap and cross-fade.

Each non-final chunk keeps its last `mel_cache_len` mel frames and excitation samples for the next chunk and holds
back its last `source_cache_len` audio samples; the next chunk re-vocodes the cached frames, so its first
`source_cache_len` samples cover the held-back audio and are cross-faded with it (Hamming window halves).
Emitted samples add up to exactly samples_per_frame * total mel frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from light_tts.models.cosyvoice2.hift.generator import HiFT

MEL_CACHE_LEN = 8  # mel frames re-vocoded at the start of the next chunk


@dataclass
class HiFTStreamState:
    """What a request carries between chunks; all None before its first chunk."""

    mel: torch.Tensor | None = None  # [1, 80, MEL_CACHE_LEN]
    source: torch.Tensor | None = None  # [1, 1, MEL_CACHE_LEN * samples_per_frame]
    speech: torch.Tensor | None = None  # [1, MEL_CACHE_LEN * samples_per_frame], held back, not yet emitted


def fade_window(overlap: int, device: torch.device | None = None) -> torch.Tensor:
    """Symmetric Hamming window of 2*overlap (numpy.hamming), float64: the first half fades in, the second out."""
    return torch.hamming_window(2 * overlap, periodic=False, dtype=torch.float64, device=device)


def cross_fade(new: torch.Tensor, held: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """new[..., :overlap] = new * window[:overlap] + held[..., -overlap:] * window[overlap:].

    Computed in float64 (upstream multiplies float32 audio by a float64 numpy window) and rounded back.
    """
    overlap = window.shape[0] // 2
    out = new.clone()
    head = new[..., :overlap].double() * window[:overlap] + held[..., -overlap:].double() * window[overlap:]
    out[..., :overlap] = head.to(new.dtype)
    return out


def hift_stream_chunk(
    hift: HiFT,
    state: HiFTStreamState,
    mel: torch.Tensor,
    finalize: bool,
    generator: torch.Generator | None = None,
    speed: float = 1.0,
    noise_keys: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Vocode the next mel chunk [1, 80, n] of a request -> the audio [1, samples] it can emit now.

    speed != 1 time-stretches the mel (linear interpolation, as upstream); only for a single finalize call.
    noise_keys: (seeds, offsets of the chunk's first sample, the re-vocoded overlap included) for counter-based
    noise instead of the generator (HiFT.inference).
    """
    overlap = MEL_CACHE_LEN * hift.samples_per_frame
    if state.mel is not None:
        mel = torch.cat([state.mel, mel], dim=2)
    if speed != 1.0:
        if state.mel is not None or not finalize:
            raise ValueError("speed change is only supported for non-streaming (one finalize call) synthesis")
        mel = F.interpolate(mel, size=int(mel.shape[2] / speed), mode="linear")
    speech, source = hift.inference(mel, state.source, generator, noise_keys)
    if state.speech is not None:
        speech = cross_fade(speech, state.speech, fade_window(overlap, speech.device))
    if finalize:
        state.mel = state.source = state.speech = None
        return speech
    state.mel = mel[:, :, -MEL_CACHE_LEN:]
    state.source = source[:, :, -overlap:]
    state.speech = speech[:, -overlap:]
    return speech[:, :-overlap]
