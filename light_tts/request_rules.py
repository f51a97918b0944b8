"""Rules every entry point applies to a request, offline (pipeline.py) and served (the HTTP worker), written once.

Pure Python with no heavy imports, so the HTTP and LLM processes can use them without loading the pipeline.
"""

from __future__ import annotations

from light_tts.errors import RequestError

MAX_TEXT_CHARS = 10_000  # longest tts_text / prompt_text; the server's --max_text_chars defaults to this
MIN_SPEED, MAX_SPEED = 0.25, 4.0
SEED_LIMIT = 2**62  # seeds are in [0, SEED_LIMIT)
VOICE_ID_PREFIX = "voice_"  # every saved voice's id starts so (an alias may not: it would shadow ids)
# The voice names OpenAI's API has, which OpenAI clients send by default (--voice_alias maps them to saved voices).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


def describe_bytes(num_bytes: int) -> str:
    """`16,842,752 bytes (16.1 MiB)`: exact for whoever compares, readable for whoever reads."""
    return f"{num_bytes:,} bytes ({num_bytes / (1 << 20):.1f} MiB)"


def check_speed(speed: float, stream: bool) -> None:
    """Speed changes stretch the whole mel before the vocoder, so they exist only without streaming."""
    if not MIN_SPEED <= speed <= MAX_SPEED:  # also rejects NaN
        raise RequestError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed:g}")
    if stream and speed != 1.0:
        raise RequestError("speed change is only supported without streaming (stream=false)")


def check_seed(seed: object) -> int | None:
    """None (a random seed is drawn) or an int in [0, SEED_LIMIT); bools are not seeds."""
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise RequestError("seed must be an integer in [0, 2**62)")
    return seed


def sentence_seed(seed: int, index: int) -> int:
    """The seed of sentence `index` of a request: sentences draw independent, reproducible streams."""
    return (seed * 1_000_003 + index) % (2**63 - 1)
