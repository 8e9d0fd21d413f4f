"""Checkpoint files for tests: well-formed ones through the typed record, and raw payloads
(hand-edited, hostile) written as they are, past every check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from instseg.checkpoint import FORMAT, FORMAT_VERSION, Checkpoint, ModelRecord


def record(**changes: Any) -> ModelRecord:
    """The record of `instseg.testing.tiny_model("unet")` with mean 0.5, std 0.25."""
    base = dict(name="unet", embedding_dim=8, max_instances=20, mean=(0.5,) * 3, std=(0.25,) * 3, width=4)
    return ModelRecord(**{**base, **changes})


def checkpoint_of(network: torch.nn.Module, **changes: Any) -> Checkpoint:
    """A weights-only checkpoint of `network`; `changes`: Checkpoint fields (model= a ModelRecord)."""
    fields = dict(model=record(), state_dict=network.state_dict(), config={"image_size": 32},
                  plugins={"instseg": "0"}, epoch=1, step=1)
    return Checkpoint(**{**fields, **changes})


def write_payload(path: Path, payload: dict[str, Any]) -> Path:
    """A raw checkpoint dict saved with the instseg format marker and nothing checked."""
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, path)
    return path
