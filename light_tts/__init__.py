"""LightTTS: a streaming text-to-speech inference server for CosyVoice2-0.5B."""

__version__ = "0.1.0"
