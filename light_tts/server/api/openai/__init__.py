"""The OpenAI-compatible surface: `/v1/audio/speech` and `/v1/audio/voices` (`routes.py`), their request and
error schemas (`schema.py`), and the text-in WebSockets `/v1/audio/speech/stream` and `/ws/tts`
(`speech_ws.py` protocol, `speech_ws_api.py` routes), and `/v1/audio/voice-conversion` (`voice_conversion.py`)."""
