"""The CosyVoice2 flow: speech tokens -> mel, whole or chunk by chunk with a per-request cache."""

from light_tts.models.flow.cache import FlowStreamState
from light_tts.models.flow.flow import Flow

__all__ = ["Flow", "FlowStreamState"]
