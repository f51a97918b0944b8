"""Text normalisation and sentence splitting: request text -> list of sentences the LLM speaks one by one."""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Callable

from light_tts.errors import TextError
from light_tts.request_rules import MAX_TEXT_CHARS

logger = logging.getLogger(__name__)

_CHINESE_CHAR = re.compile(r"[\u4e00-\u9fff]+")
_ZH_SENTENCE_END = ("。", "？", "！", "；", "：", "、", ".", "?", "!", ";")
_EN_SENTENCE_END = (".", "?", "!", ";", ":")
_CLOSING_QUOTES = ('"', "”")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion", "sextillion")


def contains_chinese(text: str) -> bool:
    return bool(_CHINESE_CHAR.search(text))


def replace_blank(text: str) -> str:
    """Drop spaces unless they sit between two non-space ASCII characters (keeps English word gaps)."""
    out = []
    for i, c in enumerate(text):
        if c == " ":
            prev = text[i - 1] if i > 0 else " "
            nxt = text[i + 1] if i + 1 < len(text) else " "
            if not (prev.isascii() and prev != " " and nxt.isascii() and nxt != " "):
                continue
        out.append(c)
    return "".join(out)


def replace_corner_mark(text: str) -> str:
    return text.replace("²", "平方").replace("³", "立方")


def remove_bracket(text: str) -> str:
    for mark in ("（", "）", "【", "】", "`"):
        text = text.replace(mark, "")
    return text.replace("——", " ")


def is_only_punctuation(text: str) -> bool:
    """True when every character is punctuation or a symbol (unicode P* / S*), as upstream's \\p{P}\\p{S} regex."""
    return all(unicodedata.category(c)[0] in "PS" for c in text)


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if rest < 20:
        tail = _ONES[rest] if rest else ""
    else:
        tail = _TENS[rest // 10] + (f"-{_ONES[rest % 10]}" if rest % 10 else "")
    if not hundreds:
        return tail
    return f"{_ONES[hundreds]} hundred" + (f" and {tail}" if tail else "")


def number_to_words(digits: str) -> str:
    """English words for a digit string, in the style of inflect's number_to_words (the upstream speller)."""
    n = int(digits)
    if n == 0:
        return "zero"
    groups = []
    while n:
        n, group = divmod(n, 1000)
        groups.append(group)
    if len(groups) > len(_SCALES):  # beyond the named scales: read digit by digit
        return " ".join(_ONES[int(d)] for d in digits)
    parts = []
    for scale, group in reversed(list(enumerate(groups))):
        if group:
            parts.append((_below_thousand(group) + " " + _SCALES[scale]).strip())
    # inflect joins a trailing group below 100 with "and" (2024 -> "two thousand and twenty-four")
    if len(parts) > 1 and groups[0] and groups[0] < 100:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return ", ".join(parts)


def spell_out_number(text: str) -> str:
    return re.sub(r"\d+", lambda m: number_to_words(m.group()), text)


def split_paragraph(text: str, tokenize: Callable[[str], list[int]], lang: str, token_max_n: int = 80,
                    token_min_n: int = 60, merge_len: int = 20, comma_split: bool = False) -> list[str]:
    """Cut at sentence punctuation, then pack sentences into pieces of about token_min_n..token_max_n.

    As upstream (except for the unpunctuated tail, see below): Chinese lengths are counted in characters,
    English lengths in tokens; a short last piece (< merge_len) is merged into the previous one.
    """
    def length(piece: str) -> int:
        return len(piece) if lang == "zh" else len(tokenize(piece))

    ends = list(_ZH_SENTENCE_END if lang == "zh" else _EN_SENTENCE_END)
    if comma_split:
        ends += ["，", ","]
    start, sentences = 0, []
    for i, c in enumerate(text):
        if c not in ends:
            continue
        if i > start:
            sentences.append(text[start:i] + c)
        if i + 1 < len(text) and text[i + 1] in _CLOSING_QUOTES and sentences:
            sentences[-1] += text[i + 1]
            start = i + 2
        else:
            start = i + 1
    # Text after the last stop gets a final stop. Upstream does this only when the text has no stop at
    # all and otherwise drops the tail silently; we keep it, since losing the user's words is never wanted.
    tail = text[start:]
    if tail.strip():
        sentences.append(tail + ("。" if lang == "zh" else "."))

    pieces, current = [], ""
    for sentence in sentences:
        if length(current + sentence) > token_max_n and length(current) > token_min_n:
            pieces.append(current)
            current = ""
        current += sentence
    if current:
        if pieces and length(current) < merge_len:
            pieces[-1] += current
        else:
            pieces.append(current)
    return pieces


def _load_wetext():
    """wetext ships its FSTs in the wheel (no download); None when it cannot be imported or run."""
    try:
        from wetext import Normalizer

        zh, en = Normalizer(remove_erhua=False), Normalizer()
        zh.normalize("1")
        logger.info("text normaliser: wetext")
        return zh, en
    except Exception as e:  # any failure means: use the built-in fallback
        logger.warning("wetext unavailable (%s): using the built-in normaliser (English numbers only)", e)
        return None


class TextNormalizer:
    """Upstream CosyVoice2 `text_normalize` with wetext (or a plain fallback) as the normaliser."""

    def __init__(self, tokenize: Callable[[str], list[int]], max_chars: int = MAX_TEXT_CHARS):
        self.tokenize = tokenize
        self.max_chars = max_chars
        self.wetext = _load_wetext()  # (zh, en) normalisers, or None for the built-in fallback

    def check_length(self, text: str) -> None:
        if len(text) > self.max_chars:
            raise TextError(f"text is {len(text)} characters; the limit is {self.max_chars}")

    def normalize(self, text: str) -> str:
        """Upstream text_normalize(split=False): the whole text normalised, unsplit ("" stays "")."""
        self.check_length(text)
        text = text.strip()
        if not text or ("<|" in text and "|>" in text):  # upstream skips normalisation for special-token markup
            return text
        return self._normalize_zh(text) if contains_chinese(text) else self._normalize_en(text)

    def normalize_and_split(self, text: str) -> list[str]:
        """Upstream text_normalize(split=True), minus pieces that are only punctuation; never returns []."""
        self.check_length(text)
        text = text.strip()
        if not text:
            raise TextError("text is empty")
        if "<|" in text and "|>" in text:
            return [text]
        lang = "zh" if contains_chinese(text) else "en"
        pieces = split_paragraph(self.normalize(text), self.tokenize, lang)
        pieces = [p for p in pieces if not is_only_punctuation(p)]
        if not pieces:
            raise TextError(f"text normalises to nothing speakable: {text[:50]!r}")
        return pieces

    def _normalize_zh(self, text: str) -> str:
        if self.wetext:
            text = self.wetext[0].normalize(text)
        text = text.replace("\n", "")
        text = replace_blank(text)
        text = replace_corner_mark(text)
        text = text.replace(".", "。").replace(" - ", "，")
        text = remove_bracket(text)
        return re.sub(r"[，,、]+$", "。", text)

    def _normalize_en(self, text: str) -> str:
        if self.wetext:
            text = self.wetext[1].normalize(text)
        return spell_out_number(text)
