"""The CosyVoice2 flow: speech tokens -> mel, whole or chunk by chunk with a per-request cache."""

from light_tts.models.cosyvoice2.flow.cache import FlowStreamState
from light_tts.models.cosyvoice2.flow.flow import Flow

__all__ = ["Flow", "FlowStreamState"]
