"""Text normalisation and sentence splitting: request text -> list of sentences the LLM speaks one by one.

Whatever the text, this either returns sentences of at most MAX_SENTENCE_TOKENS tokens or raises TextError (a 400
that names the problem): control characters and terminal escapes are dropped, runs of combining marks are capped,
lone surrogates are refused, a normaliser that fails falls back to the built-in one (logged), and a sentence
without punctuation is cut at word boundaries (or anywhere, for a "word" with no space) to fit the budget.

Control tags (the tokenizer's added tokens: `[breath]`, `[laughter]`, `<strong>...</strong>`, ...) come through
intact, so each reaches the LLM as its one token id: wetext never sees them (the text between them is normalised
piece by piece), no cut falls inside one, and text that arrives in pieces holds back a piece's unfinished tag
(PieceJoiner). Text that only looks like a tag (`See [1]`, `[sic]`) is text.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable

from light_tts.errors import TextError
from light_tts.request_rules import MAX_TEXT_CHARS

logger = logging.getLogger(__name__)

# Upstream packs sentences into pieces of token_min_n..token_max_n (60..80) tokens and merges a last piece below
# merge_len (20) into the one before, so no piece of ordinary text exceeds 60 + 80 + 20 tokens; nothing does here.
MAX_SENTENCE_TOKENS = 160
MAX_COMBINING_MARKS = 30  # per base character: Unicode's stream-safe text format (UAX #15) allows no more

_ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CHINESE_CHAR = re.compile(r"[\u4e00-\u9fff]+")
_ZH_SENTENCE_END = ("。", "？", "！", "；", "：", "、", ".", "?", "!", ";")
_EN_SENTENCE_END = (".", "?", "!", ";", ":")
_CLOSING_QUOTES = ('"', "”")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
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


def clean_text(text: str) -> str:
    """Drop what no one means to hear: terminal escape sequences, control characters (tabs and line breaks become
    spaces), combining marks beyond MAX_COMBINING_MARKS on one character. A lone surrogate (invalid Unicode, e.g.
    from a JSON "\\ud800") is refused."""
    for i, c in enumerate(text):
        if "\ud800" <= c <= "\udfff":
            raise TextError(f"text contains a lone surrogate (U+{ord(c):04X}) at position {i}: not valid Unicode")
    text = _ESCAPE_SEQUENCE.sub("", text)
    out, num_marks = [], 0
    for c in text:
        category = unicodedata.category(c)
        if category == "Cc":
            if c in "\t\n\r" and not (out and out[-1] == " "):
                out.append(" ")
            num_marks = 0
            continue
        num_marks = num_marks + 1 if category.startswith("M") else 0
        if num_marks <= MAX_COMBINING_MARKS:
            out.append(c)
    return "".join(out)


def tag_pattern(tags: Iterable[str]) -> re.Pattern | None:
    """A regex matching any of `tags` (longest first), None for no tags."""
    tags = sorted(set(tags), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tags))) if tags else None


def split_to_budget(text: str, length: Callable[[str], int], budget: int, tags: re.Pattern | None = None) -> list[str]:
    """Cut `text` into consecutive parts of length <= budget (concatenated, they give `text` back): halves at
    the space nearest the middle, or at the middle character (never between a character and its combining
    marks, nor inside a control tag) when there is no space. A single character or tag is always short enough."""
    if length(text) <= budget or len(text) < 2:
        return [text]
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " " and 0 < i < len(text) - 1]
    cut = min(spaces, key=lambda i: abs(i - middle)) if spaces else middle
    while 0 < cut < len(text) - 1 and unicodedata.combining(text[cut]):
        cut += 1
    if not 0 < cut < len(text):
        cut = middle
    for tag in tags.finditer(text) if tags else ():
        if tag.start() < cut < tag.end():  # move the cut out of the tag, to whichever side leaves both parts
            cut = tag.start() if tag.start() > 0 else tag.end()
    if not 0 < cut < len(text):  # the whole text is one tag
        return [text]
    return split_to_budget(text[:cut], length, budget, tags) + split_to_budget(text[cut:], length, budget, tags)


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


def split_paragraph(
    text: str,
    tokenize: Callable[[str], list[int]],
    lang: str,
    token_max_n: int = 80,
    token_min_n: int = 60,
    merge_len: int = 20,
    comma_split: bool = False,
    tags: re.Pattern | None = None,
) -> list[str]:
    """Cut at sentence punctuation, then pack sentences into pieces of about token_min_n..token_max_n.

    As upstream (except for the unpunctuated tail, see below): Chinese lengths are counted in characters,
    English lengths in tokens; a short last piece (< merge_len) is merged into the previous one.
    """

    def length(piece: str) -> int:
        return len(piece) if lang == "zh" else len(tokenize(piece))

    ends = list(_ZH_SENTENCE_END if lang == "zh" else _EN_SENTENCE_END)
    sentences = [
        part
        for sentence in split_at_stops(text, ends, lang, comma_split)
        for part in split_to_budget(sentence, length, token_max_n, tags)
    ]

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


def split_at_stops(text: str, ends: list[str], lang: str, comma_split: bool) -> list[str]:
    """Sentences ending at sentence punctuation (and a closing quote right after it), as upstream."""
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
    return sentences


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
    """Upstream CosyVoice2 `text_normalize` with wetext (or a plain fallback) as the normaliser; `tags` are the
    tokenizer's control tags, kept intact."""

    def __init__(self, tokenize: Callable[[str], list[int]], max_chars: int = MAX_TEXT_CHARS, tags: Iterable[str] = ()):
        self.tokenize = tokenize
        self.max_chars = max_chars
        self.tags = tag_pattern(tags)
        self.wetext = _load_wetext()  # (zh, en) normalisers, or None for the built-in fallback

    def check_length(self, text: str) -> None:
        if len(text) > self.max_chars:
            raise TextError(f"text is {len(text)} characters; the limit is {self.max_chars}")

    def normalize(self, text: str) -> str:
        """Upstream text_normalize(split=False): the whole text normalised, unsplit ("" stays "")."""
        self.check_length(text)
        text = clean_text(text).strip()
        if not text or ("<|" in text and "|>" in text):  # upstream skips normalisation for special-token markup
            return text
        return self._normalize_zh(text) if contains_chinese(text) else self._normalize_en(text)

    def normalize_and_split(self, text: str) -> list[str]:
        """Upstream text_normalize(split=True), minus pieces that are only punctuation; never returns [], never a
        piece over MAX_SENTENCE_TOKENS tokens."""
        self.check_length(text)
        text = clean_text(text).strip()
        if not text:
            raise TextError("text is empty")
        if "<|" in text and "|>" in text:
            pieces = [text]
        else:
            lang = "zh" if contains_chinese(text) else "en"
            pieces = split_paragraph(self.normalize(text), self.tokenize, lang, tags=self.tags)
        count = lambda piece: len(self.tokenize(piece))  # noqa: E731
        pieces = [part.strip() for p in pieces for part in split_to_budget(p, count, MAX_SENTENCE_TOKENS, self.tags)]
        pieces = [p for p in pieces if p and not is_only_punctuation(p)]
        if not pieces:
            raise TextError(f"text normalises to nothing speakable: {text[:50]!r}")
        return pieces

    def has_speech(self, text: str) -> bool:
        """Whether normalize_and_split(text) would find something to speak (the bistream check of a text that
        arrives in pieces, so that it is refused exactly when the same text over HTTP would be)."""
        try:
            self.normalize_and_split(text)
        except TextError:
            return False
        return True

    def _wetext(self, lang: int, text: str) -> str:
        """wetext's normaliser on the text between control tags (it asserts on some tags' neighbours, e.g.
        "[breath]5", and could rewrite a tag), keeping the spaces around each piece; one that fails on a piece
        (its grammar asserts on some inputs, such as "[1]") leaves that piece to the built-in rules, with a
        warning."""
        if self.tags is None or not self.tags.search(text):
            return self._wetext_piece(lang, text)
        parts, start = [], 0
        for tag in self.tags.finditer(text):
            parts += [self._wetext_piece(lang, text[start : tag.start()]), tag.group()]
            start = tag.end()
        return "".join(parts + [self._wetext_piece(lang, text[start:])])

    def _wetext_piece(self, lang: int, text: str) -> str:
        core = text.strip()
        if not core:
            return text
        try:
            normalized = self.wetext[lang].normalize(core)
        except Exception as e:
            logger.warning(
                "wetext failed on %r (%s: %s); using the built-in normaliser for it", core[:60], type(e).__name__, e
            )
            return text
        return text[: len(text) - len(text.lstrip())] + normalized + text[len(text.rstrip()) :]

    def _normalize_zh(self, text: str) -> str:
        if self.wetext:
            text = self._wetext(0, text)
        text = text.replace("\n", "")
        text = replace_blank(text)
        text = replace_corner_mark(text)
        text = text.replace(".", "。").replace(" - ", "，")
        text = remove_bracket(text)
        return re.sub(r"[，,、]+$", "。", text)

    def _normalize_en(self, text: str) -> str:
        if self.wetext:
            text = self._wetext(1, text)
        return spell_out_number(text)


class PieceJoiner:
    """Text that arrives in pieces (the bistream WebSocket), made ready for tokenizing piece by piece: a piece that
    ends inside a control tag (`... [laugh` + `ter] ...`) keeps the tag's start back for the next piece, so the
    tag is tokenized whole, as its one id."""

    def __init__(self, tags: Iterable[str]):
        self.tags = tuple(set(tags))
        self.longest = max(map(len, self.tags), default=0)
        self.held = ""

    def add(self, piece: str) -> str:
        """The text to tokenize now: what was held and `piece`, less an unfinished tag at its end."""
        text, self.held = self.held + piece, ""
        for start in range(max(0, len(text) - self.longest + 1), len(text)):
            tail = text[start:]
            if any(tag.startswith(tail) and tag != tail for tag in self.tags):
                text, self.held = text[:start], tail
                break
        return text

    def finish(self) -> str:
        """What is still held once the text has ended (an unfinished tag is text after all)."""
        text, self.held = self.held, ""
        return text
