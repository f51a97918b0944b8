"""The models one server serves: `--model_dir [NAME=]DIR`, given once or several times, and what tells them apart.

Each model has a name (tts_model_name; the folder's name unless given), a family (families/), and two content
keys: `flow_key` over its family's codec files (flow and HiFT weights: models with equal keys, the "styles" case
where only the LLM was fine-tuned, share decode processes) and `frontend_key` over the family's frontend files
(speech tokenizer, speaker model, text tokenizer) and the frontend's settings (prompt-mel parameters, tokenizer
version): models with equal keys share voice-cache entries and saved voices' features. The first model is the
default. A model's voices are prompt recordings (saved voices, uploads) or, for a family that takes no prompt
audio (Orpheus), the names its facts list: the checks here (check_voice, refuse_prompt_audio) are what every
endpoint answers for them. No torch here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from light_tts.errors import NotFoundError, RequestError
from light_tts.families import family_named
from light_tts.families.base import ModelFacts

DEFAULT_NAME = "default"  # tts_model_name of the first model, whatever its name
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_dir: str
    facts: ModelFacts
    flow_key: str  # sha256 over the family's codec files (flow.pt and hift.pt; Orpheus: SNAC)
    frontend_key: str  # sha256 over the speech tokenizer, CAM++, the text tokenizer's folder and frontend settings
    family: str = "cosyvoice2"

    @property
    def decode_group_key(self) -> tuple[str, tuple[int | float, ...]]:
        """Models with equal keys are served by the same decode processes."""
        return (self.flow_key, self.facts.decode_layout())


def parse_model_specs(values: Sequence[str]) -> list[tuple[str, str]]:
    """(name, dir) of each `--model_dir` value, `DIR` or `NAME=DIR` (the name defaults to the folder's name);
    raises ValueError for an empty or reserved name and for a name given twice."""
    specs: list[tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or "/" in name:  # a plain path (which may itself contain "=" after a slash)
            name, path = Path(value.rstrip("/")).name, value
        if not name or not path:
            raise ValueError(f"--model_dir {value!r}: expected DIR or NAME=DIR")
        if name == DEFAULT_NAME:
            raise ValueError(
                f"--model_dir {value!r}: {DEFAULT_NAME!r} is reserved (it means the first model); "
                f"name the model otherwise with NAME=DIR"
            )
        if any(name == other for other, _ in specs):
            raise ValueError(f"--model_dir: two models are named {name!r}; give them distinct names with NAME=DIR")
        specs.append((name, path))
    return specs


def digest_files(root: str | Path, names: Sequence[str], salt: str = "") -> str:
    """sha256 over `salt` and the named files (a folder: every file below it, in name order), read in chunks. A
    missing file counts as absent (check_complete reports it at startup)."""
    root, h = Path(root), hashlib.sha256(salt.encode())
    for name in names:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(root)).encode() + b"\0")
            if not file.is_file():
                h.update(b"absent\0")
                continue
            with open(file, "rb") as f:
                while chunk := f.read(HASH_CHUNK_BYTES):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def make_entry(name: str, model_cfg: Any) -> ModelEntry:
    """The entry of a model (a config its family read: `model_cfg.family` names the family), whose family names
    the files of each content key and the facts. The frontend key also covers the frontend's settings: the same
    ONNX files with another prompt mel (CosyVoice3's 12 kHz fmax) or other special tokens give other features."""
    model_dir, family = str(model_cfg.model_dir), family_named(model_cfg.family)
    return ModelEntry(
        name,
        model_dir,
        family.model_facts(model_cfg),
        digest_files(model_dir, family.flow_files),
        digest_files(model_dir, family.frontend_files, family.frontend_salt(model_cfg)),
        family.name,
    )


def prompt_models(models: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The models that take prompt audio (saved voices and uploads); the first of them computes saved voices."""
    return [entry for entry in models if entry.facts.takes_prompt_audio]


def voice_model(models: Sequence[ModelEntry], name: str | None = None, aliases: Sequence[str] = ()) -> int:
    """Index of the model whose frontend computes an uploaded voice's features: the model `name` names
    (NotFoundError for an unknown name, RequestError (400) for one without prompt audio), else the first that takes
    prompt audio; RequestError (400) when none does."""
    if name is not None:
        index = resolve_model(models, name, aliases)
        if not models[index].facts.takes_prompt_audio:
            raise refuse_prompt_audio(models[index])
        return index
    for i, entry in enumerate(models):
        if entry.facts.takes_prompt_audio:
            return i
    voices = "; ".join(f"{m.name}: {', '.join(m.facts.voices)}" for m in models)
    raise RequestError(
        f"no model of this server takes prompt audio, so voices cannot be uploaded; its voices are named ({voices})"
    )


def check_compatible(models: Sequence[ModelEntry]) -> None:
    """Request slots and the voice cache have one prompt layout (speaker embedding, mel bins, mel frames per
    token); models with prompt audio that differ there cannot share a server (models without it have none)."""
    with_prompt = prompt_models(models)
    for entry in with_prompt[1:]:
        f, first = entry.facts, with_prompt[0]
        if f.prompt_layout() != first.facts.prompt_layout():
            raise ValueError(
                f"model {entry.name!r} has prompt features of another layout than {first.name!r} "
                f"(speaker embedding, mel bins, mel frames per token: {f.prompt_layout()} vs "
                f"{first.facts.prompt_layout()}); serve them from separate servers"
            )


def check_voice(entry: ModelEntry, voice: str) -> str:
    """The named voice `voice` of a model without prompt audio; RequestError (400) naming its voices."""
    if voice not in entry.facts.voices:
        raise RequestError(
            f"unknown voice {voice!r} for model {entry.name!r}: it speaks as {', '.join(entry.facts.voices)}"
        )
    return voice


def has_modes(entry: ModelEntry, mode: str | None, instruction: str | None) -> bool:
    """Whether the model has modes (CosyVoice's: request_rules.resolve_mode then picks one). A model without
    (Orpheus speaks its named voices only) refuses a mode, an instruction or voice conversion: RequestError (400)."""
    if family_named(entry.family).modes:
        return True
    asked = [f"mode {mode!r}"] if mode is not None else []
    if instruction and instruction.strip():
        asked.append("instructions")
    if asked:
        raise RequestError(
            f"model {entry.name!r} has no modes: it takes no {' or '.join(asked)} (it speaks the "
            f"text in one of its voices: {', '.join(entry.facts.voices)})"
        )
    return False


def refuse_prompt_audio(entry: ModelEntry) -> RequestError:
    """The 400 for prompt audio (or a saved voice) sent to a model that speaks in named voices only."""
    return RequestError(
        f"model {entry.name!r} takes no prompt audio or saved voice: name one of its voices "
        f"({', '.join(entry.facts.voices)})"
    )


def model_for_voice(models: Sequence[ModelEntry], name: str | None, voice: str, aliases: Sequence[str] = ()) -> int:
    """Index of the model a request for `voice` means: the model it names; when it names none, or an alias of the
    default (OpenAI's tts-1), the first model that has `voice` as a named voice (`{"voice": "tara"}` reaches the
    Orpheus model of a mixed server), else the default. NotFoundError for an unknown name."""
    if name is None or name in aliases:
        index = next((i for i, entry in enumerate(models) if voice in entry.facts.voices), None)
        if index is not None:
            return index
    return resolve_model(models, name or DEFAULT_NAME, aliases)


def model_index(models: Sequence[ModelEntry], name: str) -> int | None:
    """Index of the model `name` ("default": the first), None if no model has that name."""
    if name == DEFAULT_NAME:
        return 0
    return next((i for i, entry in enumerate(models) if entry.name == name), None)


def resolve_model(models: Sequence[ModelEntry], name: str, aliases: Sequence[str] = ()) -> int:
    """Index of the model a request names ("default" and `aliases`, e.g. OpenAI's tts-1: the first model);
    raises NotFoundError (404) naming the models this server serves."""
    index = 0 if name in aliases else model_index(models, name)
    if index is None:
        served = ", ".join(repr(m.name) for m in models)
        raise NotFoundError(
            f"model {name!r} not found; this server serves {served} ({DEFAULT_NAME!r}: {models[0].name!r})"
        )
    return index
