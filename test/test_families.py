"""The family registry: a model directory is recognised by its marker file, an unknown one is a clear error, and each
family supplies its LLM prompt for every mode it serves."""

import pytest

from light_tts.errors import ModelDirError, RequestError
from light_tts.families import FAMILIES, detect_family, family_named, load_family
from light_tts.families.base import CROSS_LINGUAL, INSTRUCT, ZERO_SHOT
from light_tts.server.runtime.config import ServerConfig

FLAGS = set(ServerConfig.__dataclass_fields__)


def test_every_family_names_itself_and_its_marker():
    for spec in FAMILIES:
        family = load_family(spec)
        assert family.name == spec.name and family.marker == spec.marker
        assert family.flow_files and family.frontend_files
        assert family_named(spec.name) is family
        assert family.decode_flags and set(family.decode_flags) <= FLAGS  # startup notes name real flags


def test_detects_cosyvoice2_by_its_yaml(tmp_path):
    (tmp_path / "cosyvoice2.yaml").write_text("{}")
    assert detect_family(tmp_path).name == "cosyvoice2"


def test_unknown_directory_names_the_known_markers(tmp_path):
    with pytest.raises(ModelDirError, match="cosyvoice2.yaml"):
        detect_family(tmp_path)
    with pytest.raises(ModelDirError, match="not found"):
        detect_family(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown model family"):
        family_named("nope")


def test_cosyvoice2_prompts_follow_upstream_frontend():
    """frontend_zero_shot: transcript and prompt speech; frontend_instruct2: the instruction + <|endofprompt|>, no
    prompt speech; frontend_cross_lingual: neither."""
    family = family_named("cosyvoice2")
    zero = family.llm_prompt(ZERO_SHOT, "the transcript")
    assert zero.text == "the transcript" and zero.uses_prompt_speech and not zero.counts_in_length
    instruct = family.llm_prompt(INSTRUCT, instruction="Speak slowly.")
    assert instruct.text == "Speak slowly.<|endofprompt|>" and not instruct.uses_prompt_speech
    assert family.llm_prompt(INSTRUCT, instruction="Slowly.<|endofprompt|>").text == "Slowly.<|endofprompt|>"
    cross = family.llm_prompt(CROSS_LINGUAL, "ignored")
    assert cross.text == "" and not cross.uses_prompt_speech
    with pytest.raises(RequestError, match="mode 'sing'"):
        family.llm_prompt("sing")
