"""Strict checkpoint loading: every released key must land in a parameter, and every parameter must be filled."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from light_tts.errors import ModelDirError
from light_tts.model_dir import safetensors_files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a released .pt state dict on the CPU; a missing or unreadable file names itself in the error."""
    if not path.is_file():
        raise ModelDirError(f"missing checkpoint file: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ModelDirError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(sd, dict):
        raise ModelDirError(f"checkpoint {path} is not a state dict (got {type(sd).__name__})")
    return sd


def read_safetensors(model_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face checkpoint: `name` or the shards its `.index.json` lists, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for path in safetensors_files(model_dir, name):
        if not path.is_file():
            raise ModelDirError(f"missing checkpoint file: {path}")
        try:
            sd.update(load_file(path))
        except (SafetensorError, OSError) as e:
            raise ModelDirError(f"cannot read checkpoint {path}: {e}") from e
    return sd


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with an error that lists what is missing, unexpected or misshapen."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshapen = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    )
    if missing or unexpected or misshapen:
        lines = [f"{source} does not match the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
            if keys:
                shown = ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        raise ModelDirError("\n".join(lines))
    module.load_state_dict(state_dict, strict=True)
