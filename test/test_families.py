"""The family registry: a model directory is recognised by its marker file, an unknown one is a clear error."""

import pytest

from light_tts.errors import ModelDirError
from light_tts.families import FAMILIES, detect_family, load_family


def test_every_family_module_names_itself_and_its_marker():
    for spec in FAMILIES:
        module = load_family(spec)
        assert module.NAME == spec.name and module.MARKER == spec.marker


def test_detects_cosyvoice2_by_its_yaml(tmp_path):
    (tmp_path / "cosyvoice2.yaml").write_text("{}")
    assert detect_family(tmp_path).name == "cosyvoice2"


def test_unknown_directory_names_the_known_markers(tmp_path):
    with pytest.raises(ModelDirError, match="cosyvoice2.yaml"):
        detect_family(tmp_path)
    with pytest.raises(ModelDirError, match="not found"):
        detect_family(tmp_path / "missing")
