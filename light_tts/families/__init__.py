"""Model families: which family a model directory holds, and which module serves it.

A family is recognised once, from its directory (the yaml upstream's `AutoModel` reads, or another marker file),
and then supplies everything family-specific through its module in this package (`cosyvoice2.py`, ...): the
model configuration, the LLM's prompt builder and stop rule, the codec the decode processes run, and its voices.
The processes ask the family; they never branch on its name. Each family's nn.Modules live in
`light_tts/models/<family>/`, its engine parts beside the shared engines (`llm/`, `decode/`).

This module is the registry and imports nothing heavy: the server's HTTP workers use it to name a directory's
family without importing torch. A family module is imported only by a process that runs it (`load_family`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from light_tts.errors import ModelDirError


@dataclass(frozen=True)
class FamilySpec:
    """A registry entry: the family's name, the file whose presence in a model directory identifies it (and, when
    that file is a common one, a light check of its content), and the module (in this package) that implements
    it."""

    name: str
    marker: str
    module: str
    check: Callable[[Path], bool] | None = None  # (marker file) -> is it this family's

    def matches(self, model_dir: Path) -> bool:
        marker = model_dir / self.marker
        return marker.is_file() and (self.check is None or self.check(marker))


def _is_orpheus(config_json: Path) -> bool:
    from light_tts.models.orpheus.config import is_orpheus_file

    return is_orpheus_file(config_json)


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("cosyvoice2", "cosyvoice2.yaml", "light_tts.families.cosyvoice2"),
    FamilySpec("orpheus", "config.json", "light_tts.families.orpheus", _is_orpheus),
)


def family_names() -> list[str]:
    return [f.name for f in FAMILIES]


def detect_family(model_dir: str | Path) -> FamilySpec:
    """The family of a model directory; ModelDirError naming the known markers when none matches."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory not found: {model_dir}")
    for spec in FAMILIES:
        if spec.matches(model_dir):
            return spec
    known = ", ".join(f"{f.marker} ({f.name})" for f in FAMILIES)  # Orpheus: a Llama config.json with audio ids
    raise ModelDirError(f"{model_dir} holds no model this server knows: expected one of {known}")


def load_family(spec: FamilySpec) -> ModuleType:
    """The family's implementation module (imported on first use, by the processes that run the family)."""
    return importlib.import_module(spec.module)


def family_of(model_dir: str | Path) -> ModuleType:
    """The implementation of a model directory's family (e.g. `family_of(dir).llm_prompt(mode, ...)`)."""
    return load_family(detect_family(model_dir))
