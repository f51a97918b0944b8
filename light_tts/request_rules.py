"""Rules every entry point applies to a request, offline (pipeline.py) and served (the HTTP worker), written once.

Pure Python with no heavy imports, so the HTTP and LLM processes can use them without loading the pipeline.
"""

from __future__ import annotations

from light_tts.errors import RequestError

MAX_TEXT_CHARS = 10_000  # longest tts_text / prompt_text; the server's --max_text_chars defaults to this
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_SPEECH_TOKENIZER_SECONDS = 30.0  # the speech tokenizer takes at most 30 s of audio (upstream asserts it)
SEED_LIMIT = 2**62  # seeds are in [0, SEED_LIMIT)
VOICE_ID_PREFIX = "voice_"  # every saved voice's id starts so (an alias may not: it would shadow ids)
# The voice names OpenAI's API has, which OpenAI clients send by default (--voice_alias maps them to saved voices).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


def describe_bytes(num_bytes: int) -> str:
    """`16,842,752 bytes (16.1 MiB)`: exact for whoever compares, readable for whoever reads."""
    return f"{num_bytes:,} bytes ({num_bytes / (1 << 20):.1f} MiB)"


# What a request asks the model to do (upstream CosyVoice2's inference_* functions). The voice's prompt audio
# always conditions the flow (tokens, mel, speaker embedding); the modes differ in the LLM's prompt, which the
# model's family builds (families/*.py, llm_prompt):
ZERO_SHOT = "zero_shot"  # the LLM continues the prompt: its transcript and its speech tokens
INSTRUCT = "instruct"  # the LLM gets an instruction (style, emotion, pace, dialect) instead, no prompt speech
CROSS_LINGUAL = "cross_lingual"  # no transcript, no prompt speech in the LLM: a voice without a transcript
VC = "vc"  # voice conversion: a source recording's speech tokens go straight to the flow, no LLM
TEXT_MODES = (ZERO_SHOT, INSTRUCT, CROSS_LINGUAL)  # the modes a text request may ask for
MODES = (*TEXT_MODES, VC)
NAMED_VOICE = "named_voice"  # a model without modes (Orpheus) speaks in its named voice: no mode applies


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


def speech_token_bounds(num_text_tokens: int) -> tuple[int, int]:
    """Upstream's bounds on a sentence's speech tokens (min_len, max_len): 2x and 20x its text tokens."""
    return 2 * num_text_tokens, 20 * num_text_tokens


def sentence_seed(seed: int, index: int) -> int:
    """The seed of sentence `index` of a request: sentences draw independent, reproducible streams."""
    return (seed * 1_000_003 + index) % (2**63 - 1)


def resolve_mode(requested: str | None, instruction: str | None, transcript: str | None) -> str:
    """The mode of a text request: instruct when it carries an instruction, else the mode it asks for, else
    zero-shot when the voice has a transcript and cross-lingual when it has none (blank counts as none: a
    zero-shot prompt without its transcript would make the LLM read the prompt's speech as the text's). Raises
    RequestError for a mode the inputs contradict."""
    has_instruction = bool(instruction and instruction.strip())
    has_transcript = bool(transcript and transcript.strip())
    if requested is not None and requested not in TEXT_MODES:
        raise RequestError(f"mode must be one of {', '.join(TEXT_MODES)}, got {requested!r}")
    if has_instruction and requested not in (None, INSTRUCT):
        raise RequestError(f"instructions select mode {INSTRUCT}; mode {requested} takes none")
    if has_instruction:
        return INSTRUCT
    if requested == INSTRUCT:
        raise RequestError(f"mode {INSTRUCT} needs an instruction (instructions, instruct_text)")
    if requested == ZERO_SHOT and not has_transcript:
        raise RequestError(
            f"mode {ZERO_SHOT} needs the voice's transcript (prompt text); a voice without one is "
            f"spoken in mode {CROSS_LINGUAL}"
        )
    return requested or (ZERO_SHOT if has_transcript else CROSS_LINGUAL)
