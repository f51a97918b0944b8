"""The models one server serves: `--model_dir [NAME=]DIR`, given once or several times, and what tells them apart.

Each model has a name (tts_model_name; the folder's name unless given), a family (families/), and two content
keys: `flow_key` over its family's codec files (flow and HiFT weights: models with equal keys, the "styles" case
where only the LLM was fine-tuned, share decode processes) and `frontend_key` over the family's frontend files
(speech tokenizer, speaker model, text tokenizer) and the frontend's settings (prompt-mel parameters, tokenizer
version): models with equal keys share voice-cache entries and saved voices' features. The first model is the
default. No torch here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from light_tts.errors import NotFoundError
from light_tts.families import family_named

if TYPE_CHECKING:
    from light_tts.model_config import ModelConfig

DEFAULT_NAME = "default"  # tts_model_name of the first model, whatever its name
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelFacts:
    """What the server layer needs to know about a model, read from its directory."""

    name: str  # accepted as tts_model_name
    sample_rate: int  # of the output audio
    token_rate: int  # speech tokens per second
    token_mel_ratio: int  # prompt mel frames per speech token
    embedding_dim: int  # speaker embedding (CAM++)
    num_mels: int
    chunk_tokens: int  # speech tokens per streamed chunk (upstream's token hop)
    pre_lookahead: int  # tokens the flow encoder looks ahead of a chunk

    @classmethod
    def from_model(cls, model_cfg: ModelConfig, name: str | None = None) -> "ModelFacts":
        return cls(name=name or Path(model_cfg.model_dir).name, sample_rate=model_cfg.sample_rate,
                   token_rate=model_cfg.token_frame_rate, token_mel_ratio=model_cfg.token_mel_ratio,
                   embedding_dim=model_cfg.flow.spk_embed_dim, num_mels=model_cfg.feat.num_mels,
                   chunk_tokens=model_cfg.chunk_size, pre_lookahead=model_cfg.flow.pre_lookahead_len)

    def decode_layout(self) -> tuple[int, ...]:
        """What a decode process is built for besides its weights: models that differ here never share one."""
        return (self.sample_rate, self.token_rate, self.token_mel_ratio, self.embedding_dim, self.num_mels,
                self.chunk_tokens, self.pre_lookahead)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_dir: str
    facts: ModelFacts
    flow_key: str  # sha256 over the family's codec files (flow.pt and hift.pt)
    frontend_key: str  # sha256 over the speech tokenizer, CAM++, the text tokenizer's folder and frontend settings
    family: str = "cosyvoice2"

    @property
    def decode_group_key(self) -> tuple[str, tuple[int, ...]]:
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
            raise ValueError(f"--model_dir {value!r}: {DEFAULT_NAME!r} is reserved (it means the first model); "
                             f"name the model otherwise with NAME=DIR")
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


def make_entry(name: str, model_cfg: ModelConfig) -> ModelEntry:
    """The entry of a model; its family (ModelConfig.family) names the files of each content key. The frontend key
    also covers the frontend's settings: the same ONNX files with another prompt mel (CosyVoice3's 12 kHz fmax) or
    other special tokens give other features."""
    model_dir, family = str(model_cfg.model_dir), family_named(model_cfg.family)
    frontend_salt = repr((model_cfg.feat, model_cfg.frontend, model_cfg.token_mel_ratio))
    return ModelEntry(name, model_dir, ModelFacts.from_model(model_cfg, name),
                      digest_files(model_dir, family.flow_files), digest_files(model_dir, family.frontend_files,
                                                                                frontend_salt), family.name)


def check_compatible(models: Sequence[ModelEntry]) -> None:
    """Request slots and the voice cache have one prompt layout (speaker embedding, mel bins, mel frames per
    token); models that differ there cannot share a server."""
    first = models[0].facts
    for entry in models[1:]:
        f = entry.facts
        if (f.embedding_dim, f.num_mels, f.token_mel_ratio) != (first.embedding_dim, first.num_mels,
                                                                first.token_mel_ratio):
            raise ValueError(f"model {entry.name!r} has prompt features of another layout than {first.name!r} "
                             f"(speaker embedding {f.embedding_dim} vs {first.embedding_dim}, mel bins {f.num_mels} "
                             f"vs {first.num_mels}, mel frames per token {f.token_mel_ratio} vs "
                             f"{first.token_mel_ratio}); serve them from separate servers")


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
        raise NotFoundError(f"model {name!r} not found; this server serves {served} ({DEFAULT_NAME!r}: "
                            f"{models[0].name!r})")
    return index
