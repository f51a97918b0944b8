"""API keys as startup facts: the keys of --api_key / --api_key_file (checked and read once, in the launcher),
and which paths stay open without one. The middleware that enforces them is `api/auth.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PUBLIC_PATHS = frozenset({"/liveness", "/readiness", "/healthz"})
PAGE_PATHS = frozenset({"/"})  # the playground page (static files, no data); its API calls need the key
PAGE_PREFIX = "/static/"
METRICS_PATH = "/metrics"
WS_KEY_PROTOCOL = "lighttts.bearer."


def check_key(key: str, source: str) -> str:
    """A key must fit an HTTP header as is: visible ASCII, no spaces. The message never contains the key."""
    if not key or not all("!" <= ch <= "~" for ch in key):
        raise ValueError(f"an API key from {source} is empty or has characters other than visible ASCII")
    return key


def read_api_key_file(path: str) -> list[str]:
    """One key per line; blank lines and lines starting with # are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --api_key_file {path}: {e}") from None
    keys = [check_key(line, f"--api_key_file {path}") for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ValueError(f"--api_key_file {path} holds no keys")  # else the server would silently run open
    return keys


@dataclass(frozen=True)
class AuthSettings:
    api_keys: tuple[str, ...] = field(repr=False)  # never in a repr, so never in a log line that prints one
    metrics_public: bool = False

    @classmethod
    def from_values(
        cls, api_key: Sequence[str] = (), api_key_file: str | None = None, metrics_public: bool = False
    ) -> AuthSettings:
        """From the --api_key (repeatable), --api_key_file and --metrics_public values."""
        keys = [check_key(k, "--api_key") for k in api_key]
        if api_key_file is not None:
            keys += read_api_key_file(api_key_file)
        return cls(tuple(dict.fromkeys(keys)), metrics_public)

    @property
    def is_enabled(self) -> bool:
        return bool(self.api_keys)

    def startup_notes(self) -> list[str]:
        """Lines for the startup log: what is protected (never the keys themselves)."""
        if not self.is_enabled:
            notes = ["no --api_key given: every endpoint is open"]
            if self.metrics_public:
                notes.append("--metrics_public is ignored: without API keys /metrics is open anyway")
            return notes
        public = sorted(PUBLIC_PATHS | PAGE_PATHS | ({METRICS_PATH} if self.metrics_public else set()))
        return [f"{len(self.api_keys)} API key(s); open without a key: {', '.join(public)}, {PAGE_PREFIX}*"]
