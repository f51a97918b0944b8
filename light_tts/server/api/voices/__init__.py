"""Saved voices: the SQLite store with each voice's audio and prompt features (voice_store) and the operator's
aliases for OpenAI's voice names (voice_aliases). Used by the routes; imports runtime facts and ipc types only."""
