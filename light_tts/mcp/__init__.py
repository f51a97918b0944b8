"""An MCP server (stdio) that lets agents speak through a running LightTTS server: `python -m light_tts.mcp`."""
