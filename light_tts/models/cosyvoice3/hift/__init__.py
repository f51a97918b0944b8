"""CosyVoice3's causal HiFT vocoder and its windowed streaming."""

from light_tts.models.cosyvoice3.hift.generator import CausalHiFT

__all__ = ["CausalHiFT"]
