"""CosyVoice2-0.5B (`cosyvoice2.yaml`): the Qwen2 speech LM, the conformer + CFM flow and HiFT.

The first family: what it supplies is what the engines were written for, so each entry here names the existing
code. Other families implement the same names.
"""

from __future__ import annotations

from light_tts.model_dir import YAML_NAME, check_complete, load_model_config

NAME = "cosyvoice2"
MARKER = YAML_NAME

__all__ = ["NAME", "MARKER", "check_complete", "load_model_config"]
