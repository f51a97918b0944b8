"""HiFT vocoder: mel -> 24 kHz audio, with the per-request streaming overlap state."""

from light_tts.models.cosyvoice2.hift.generator import HiFT
from light_tts.models.cosyvoice2.hift.streaming import HiFTStreamState, hift_stream_chunk

__all__ = ["HiFT", "HiFTStreamState", "hift_stream_chunk"]
