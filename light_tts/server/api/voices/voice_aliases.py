"""Other names for saved voices (--voice_alias NAME=VOICE), so that requests may say `alloy` as OpenAI clients do.

VOICE is a voice id, or a voice's name, which means the newest voice of that name: uploading a new "narrator" moves
`alloy=narrator` to it, and the flag can be written before the voice exists. Pure lookups over a list of voices;
the voice store (voice_store.py) reads the rows.
"""

from __future__ import annotations

from light_tts.errors import NotFoundError
from light_tts.request_rules import OPENAI_VOICES, VOICE_ID_PREFIX

MAX_LISTED = 20  # voices named in a 404's message (the newest)


class VoiceAliases:
    def __init__(self, aliases: dict[str, str] | None = None):
        self.aliases = dict(aliases or {})  # alias -> voice id or name

    def target(self, voice: str) -> tuple[str, bool]:
        """(what `voice` names, whether that may be a voice's name rather than an id)."""
        if voice in self.aliases:
            target = self.aliases[voice]
            return target, not target.startswith(VOICE_ID_PREFIX)
        return voice, False

    def named(self, voices: list) -> dict[str, list[str]]:
        """voice id -> the aliases that name it now; `voices` are voice_store.Voice rows, oldest first."""
        newest = {v.name: v.id for v in voices}
        ids = {v.id for v in voices}
        named: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            voice_id = target if target.startswith(VOICE_ID_PREFIX) else newest.get(target)
            if voice_id in ids:
                named.setdefault(voice_id, []).append(alias)
        return named

    def not_found(self, voice: str, voices: list) -> NotFoundError:
        """A 404 that lists what a request may name instead (the saved voices, newest last, and the aliases)."""
        if voice in self.aliases:
            problem = f"voice {voice!r} is an alias of {self.aliases[voice]!r}, which is no saved voice's id or name"
        else:
            problem = f"voice {voice!r} not found"
        if voices:
            more = f" and {len(voices) - MAX_LISTED} more" if len(voices) > MAX_LISTED else ""
            known = ["saved voices: " + ", ".join(f"{v.id} ({v.name})" for v in voices[-MAX_LISTED:]) + more]
        else:
            known = ["no saved voices (POST /v1/audio/voices)"]
        if self.aliases:
            known.append("aliases: " + ", ".join(f"{a} -> {t}" for a, t in self.aliases.items()))
        else:
            known.append(
                f"no aliases (the operator maps OpenAI's voice names, such as {OPENAI_VOICES[0]}, with "
                f"--voice_alias {OPENAI_VOICES[0]}=VOICE)"
            )
        return NotFoundError(f"{problem}; {'; '.join(known)}", param="voice")
