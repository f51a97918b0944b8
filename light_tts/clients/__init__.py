"""Command-line clients of a running LightTTS server (console scripts lighttts-say, -stream, -bistream, -bench).

They need only `pip install light-tts[client]` (httpx, websockets): no torch, no server dependencies.
"""
