"""Each mode's LLM input, built by the family, against upstream CosyVoice2's rules (cli/frontend.py):

- zero-shot (frontend_zero_shot): [sos, transcript ++ text, task_id, prompt speech]; the transcript normalised;
- instruct (frontend_instruct2): the instruction, as given (not normalised), ending with <|endofprompt|> once, in
  the transcript's place, and NO prompt speech tokens;
- cross-lingual (frontend_cross_lingual): neither transcript nor prompt speech: [sos, text, task_id];
- vc: no LLM at all;
and in every mode the speech-token bounds count the text to speak only (prompt text excluded). The flow's inputs
(the same prompt tokens, mel and embedding in every mode; the source's tokens in vc) are checked on a real model
in test_pipeline.py. Control tags reach the LLM as their one token id, text that looks like one does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from light_tts.errors import RequestError
from light_tts.families import cosyvoice2, family_of
from light_tts.families.modes import llm_prompt_tokens
from light_tts.frontend.prompt import Prompt
from light_tts.frontend.text_norm import PieceJoiner, TextNormalizer
from light_tts.frontend.tokenizer import QwenTokenizer
from light_tts.llm.request import LLMRequest, Sequence, TokenLayout
from light_tts.model_dir import TOKENIZER_DIR, load_model_config
from light_tts.request_rules import CROSS_LINGUAL, INSTRUCT, VC, ZERO_SHOT, resolve_mode
from light_tts.tools.make_tokenizer import write_tokenizer

TRANSCRIPT = "I paid 3 dollars."  # normalised: the digit is spelled out
INSTRUCTION = "Speak 2 times faster."  # not normalised: the digit stays
TEXT = "Hello there."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    token_dir = tmp_path_factory.mktemp("tokenizer") / TOKENIZER_DIR
    write_tokenizer(token_dir, "tiny")
    return QwenTokenizer(token_dir)


@pytest.fixture(scope="module")
def normalizer(tokenizer):
    return TextNormalizer(tokenizer.encode, tags=tokenizer.special_tokens)


@pytest.fixture(scope="module")
def layout(fixture_dir):
    return TokenLayout.from_config(load_model_config(fixture_dir).llm)


@pytest.fixture
def prompt():
    return Prompt(
        text_tokens=np.zeros(0, np.int32),
        speech_tokens=np.arange(100, 112, dtype=np.int32),
        embedding=np.ones(192, np.float32),
        mel=np.zeros((24, 80), np.float32),
    )


def llm_input(mode, prompt, tokenizer, normalizer, layout, instruction="") -> tuple[list[int], Sequence]:
    """The engine's input ids of TEXT in `mode` (as the encode process and the LLM process build them)."""
    built = cosyvoice2.FAMILY.llm_prompt(mode, TRANSCRIPT, instruction)
    text_tokens, speech_tokens = llm_prompt_tokens(
        built, prompt, lambda text: np.asarray(tokenizer.encode(normalizer.normalize(text)), np.int32)
    )
    tts = tokenizer.encode(TEXT)
    seq = Sequence(LLMRequest("r", tts, text_tokens.tolist(), speech_tokens.tolist()), layout, 0, 4096)
    return tts, seq


def test_the_fixture_is_a_cosyvoice2_directory(fixture_dir):
    assert family_of(fixture_dir) is cosyvoice2.FAMILY


@pytest.mark.parametrize(
    "requested, instruction, transcript, mode",
    [
        (None, None, "a transcript", ZERO_SHOT),
        (None, None, None, CROSS_LINGUAL),  # a voice without a transcript
        (None, None, "  ", CROSS_LINGUAL),  # blank is none: never a zero-shot prompt without its transcript
        (None, "Speak softly.", "a transcript", INSTRUCT),
        (None, "Speak softly.", None, INSTRUCT),
        (None, " ", "a transcript", ZERO_SHOT),  # blank instructions (OpenAI clients send "") are none
        (INSTRUCT, "Speak softly.", None, INSTRUCT),
        (CROSS_LINGUAL, None, "a transcript", CROSS_LINGUAL),  # forced: the prompt's language differs from the text's
        (ZERO_SHOT, None, "a transcript", ZERO_SHOT),
    ],
)
def test_resolve_mode(requested, instruction, transcript, mode):
    assert resolve_mode(requested, instruction, transcript) == mode


@pytest.mark.parametrize(
    "requested, instruction, transcript, message",
    [
        (INSTRUCT, None, "a transcript", "needs an instruction"),
        (ZERO_SHOT, None, None, "needs the voice's transcript"),
        (CROSS_LINGUAL, "Speak softly.", "a transcript", "instructions select mode instruct"),
        (VC, None, "a transcript", "mode must be one of"),
        ("sing", None, "a transcript", "mode must be one of"),
    ],
)
def test_contradicting_modes_are_400(requested, instruction, transcript, message):
    with pytest.raises(RequestError, match=message):
        resolve_mode(requested, instruction, transcript)


def test_zero_shot_gives_the_transcript_then_the_text_then_the_prompt_speech(prompt, tokenizer, normalizer, layout):
    tts, seq = llm_input(ZERO_SHOT, prompt, tokenizer, normalizer, layout)
    transcript = tokenizer.encode(normalizer.normalize(TRANSCRIPT))
    assert "three" in tokenizer.decode(transcript)  # normalised, as upstream's inference_zero_shot does
    assert seq.token_ids == (
        [layout.sos] + layout.text(transcript + tts) + [layout.task_id] + prompt.speech_tokens.tolist()
    )
    assert (seq.min_len, seq.max_len) == (2 * len(tts), 20 * len(tts))  # prompt text excluded


@pytest.mark.parametrize("instruction", [INSTRUCTION, INSTRUCTION + cosyvoice2.END_OF_PROMPT])
def test_instruct_gives_the_instruction_and_its_end_marker_and_no_prompt_speech(
    prompt, tokenizer, normalizer, layout, instruction
):
    tts, seq = llm_input(INSTRUCT, prompt, tokenizer, normalizer, layout, instruction)
    end = tokenizer.token_id(cosyvoice2.END_OF_PROMPT)
    instruction_ids = tokenizer.encode(INSTRUCTION)  # as given: "2" stays a digit
    assert seq.token_ids == [layout.sos] + layout.text(instruction_ids + [end] + tts) + [layout.task_id]
    assert seq.token_ids.count(layout.text([end])[0]) == 1  # a marker the client sent is not doubled
    assert not set(prompt.speech_tokens.tolist()) & set(seq.token_ids[seq.token_ids.index(layout.task_id) :])
    assert (seq.min_len, seq.max_len) == (2 * len(tts), 20 * len(tts))


def test_cross_lingual_gives_the_text_alone(prompt, tokenizer, normalizer, layout):
    tts, seq = llm_input(CROSS_LINGUAL, prompt, tokenizer, normalizer, layout)
    assert seq.token_ids == [layout.sos] + layout.text(tts) + [layout.task_id]


def test_voice_conversion_has_no_llm_prompt():
    with pytest.raises(RequestError, match="mode 'vc' is not supported"):
        cosyvoice2.FAMILY.llm_prompt(VC)


def test_every_control_tag_reaches_the_llm_as_its_one_token_id(tokenizer, normalizer):
    """Whatever surrounds a tag (numbers wetext would spell, Chinese, no spaces), normalising and splitting keep
    it whole, and it tokenizes to its one id; `See [1]` and `[sic]` stay text."""
    for tag in cosyvoice2.CONTROL_TAGS:
        tag_id = tokenizer.token_id(tag)
        for text in (
            f"I have 3 {tag} cats.",
            f"{tag}5 dollars, 10%{tag}20%.",
            f"我有3只{tag}猫。",
            "x" * 100 + tag + "y" * 300,
        ):
            ids = [i for sentence in normalizer.normalize_and_split(text) for i in tokenizer.encode(sentence)]
            assert ids.count(tag_id) == text.count(tag), (tag, text)
        # wetext (which asserts on "[breath]5") still normalises the text around the tags
        assert "percent" in normalizer.normalize(f"{tag}5 dollars, 10%{tag}20%.")
    special = {tokenizer.token_id(t) for t in tokenizer.special_tokens}
    for text in ("See [1] and [sic] here.", "A [cough.", "<b>bold</b>"):
        ids = [i for sentence in normalizer.normalize_and_split(text) for i in tokenizer.encode(sentence)]
        assert not special & set(ids), text


def test_a_tag_split_between_two_pieces_is_joined(tokenizer):
    """Bistream text: a piece that ends inside a tag keeps the tag's start for the next piece."""
    joiner = PieceJoiner(tokenizer.special_tokens)
    pieces = [joiner.add(p) for p in ("Hi [lau", "ghter] there <str", "ong>now</", "strong>. A < b [", "1]")]
    assert pieces == ["Hi ", "[laughter] there ", "<strong>now", "</strong>. A < b ", "[1]"]
    assert joiner.add("and [cou") == "and " and joiner.finish() == "[cou"  # never finished: text after all
    ids = [i for p in pieces for i in tokenizer.encode(p)]
    for tag in ("[laughter]", "<strong>", "</strong>"):
        assert ids.count(tokenizer.token_id(tag)) == 1
