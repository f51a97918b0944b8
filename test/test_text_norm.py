"""Text that users really send: the normaliser either returns sentences within the per-sentence token budget or
raises TextError, whatever the text (brackets, escapes, combining marks, no punctuation, lone surrogates)."""

from __future__ import annotations

import logging
import unicodedata

import pytest

from light_tts.errors import TextError
from light_tts.frontend.text_norm import (
    MAX_COMBINING_MARKS,
    MAX_SENTENCE_TOKENS,
    TextNormalizer,
    clean_text,
    split_to_budget,
)


def byte_tokens(text: str) -> list[int]:
    """The worst a byte-level BPE can do: one token per UTF-8 byte."""
    return list(text.encode())


@pytest.fixture(scope="module")
def normalizer():
    return TextNormalizer(byte_tokens)


def letters(text: str) -> str:
    return "".join(c for c in text if c.isalpha())


def test_clean_text_drops_escapes_and_controls_and_caps_combining_marks():
    assert clean_text("Hi \x1b[31mred\x1b[0m there.\x07") == "Hi red there."
    assert clean_text("one\ttwo\r\nthree") == "one two three"
    zalgo = clean_text("a" + "\u0301" * 900 + "b")
    assert zalgo == "a" + "\u0301" * MAX_COMBINING_MARKS + "b"
    with pytest.raises(TextError, match="lone surrogate"):
        clean_text("fine\ud800")


def test_split_to_budget_keeps_the_text_and_its_clusters():
    length = lambda s: len(byte_tokens(s))  # noqa: E731
    text = "word " * 200 + "x" * 700 + "e\u0301" * 300
    parts = split_to_budget(text, length, 80)
    assert "".join(parts) == text
    assert all(length(p) <= 80 for p in parts)
    assert not any(unicodedata.combining(p[0]) for p in parts)  # a mark stays with its letter


@pytest.mark.parametrize(
    "name,text",
    [
        ("600 words, no punctuation", " ".join(["word"] * 600)),
        ("3000 letters, no space", "x" * 3000),
        ("a letter and 900 combining marks", "a" + "\u0301" * 900),
        ("Chinese without punctuation", "语音合成系统把文字变成声音" * 40),
        ("one long sentence among short ones", "Short. " + "very " * 400 + "long. Short again."),
    ],
)
def test_no_sentence_exceeds_the_budget(normalizer, name, text):
    pieces = normalizer.normalize_and_split(text)
    assert all(len(byte_tokens(p)) <= MAX_SENTENCE_TOKENS for p in pieces), [len(byte_tokens(p)) for p in pieces]
    if not any(unicodedata.combining(c) for c in text):
        assert letters("".join(pieces)) == letters(text)  # nothing lost


@pytest.mark.parametrize("text", ["See [1] for details.", "Room [2b] is free.", "[1]", "你好[1]世界"])
def test_text_the_normaliser_chokes_on_falls_back_with_a_warning(normalizer, text, caplog):
    with caplog.at_level(logging.WARNING, logger="light_tts.frontend.text_norm"):
        pieces = normalizer.normalize_and_split(text)
    assert pieces and all(p.strip() for p in pieces)


@pytest.mark.parametrize(
    "text,speakable",
    [("😀😀😀", False), ("?!...", False), ("", False), ("   ", False), ("$$$", True), ("Hi", True), ("\x1b[0m", False)],
)
def test_has_speech_matches_normalize_and_split(normalizer, text, speakable):
    assert normalizer.has_speech(text) is speakable
    if not speakable:
        with pytest.raises(TextError):
            normalizer.normalize_and_split(text)
