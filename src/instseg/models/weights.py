"""Starting a network from local weights (`instseg train --weights`): a backbone's state dict,
or a run's checkpoint (of the same model: fine-tune all of it; of another: take its backbone).

Apart from the registry, which builds networks but never reads files, and beside
`checkpoint`, whose safe `torch.load(weights_only=True)` it uses so that instseg unpickles
files in one place only. torch is imported on first use: importing this module (as the
registry does, for compatibility) keeps the ONNX inference path torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instseg.errors import CheckpointError, ConfigError

BACKBONE_PREFIX = "backbone."  # how a whole model's state dict names its backbone's entries
DATA_STATISTICS = "normalize."  # the model's input mean / std: always the new data's own


@dataclass(frozen=True)
class WeightsReport:
    """What `load_backbone_weights` did: tensors loaded, backbone keys left as initialised, file keys ignored."""

    path: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    part: str = "backbone"  # or "model": a run of the same model, fine-tuned whole

    def summary(self) -> str:
        text = f"{self.part} weights {self.path}: loaded {self.loaded} tensors"
        if self.part == "model":
            text += " (all but the input normalisation, which is this data's)"
        if self.missing:
            text += f"; {len(self.missing)} {self.part} keys missing from the file, left as initialised " \
                    f"(e.g. {', '.join(self.missing[:3])})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected keys ignored (e.g. {', '.join(self.unexpected[:3])})"
        return text


def load_weights(model: Any, name: str, path: str | os.PathLike) -> WeightsReport:
    """`--weights`: a checkpoint of a run of the same model `name` starts every weight of `model`
    (fine-tuning, e.g. on real data after synthetic pretraining) except its input normalisation;
    anything else starts its backbone (`load_backbone_weights`)."""
    from instseg.checkpoint import load_weights_only

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    payload = load_weights_only(path, what="weights file")
    record = payload.get("model") if isinstance(payload, dict) else None
    if not (isinstance(record, dict) and record.get("name") == name):
        return load_backbone_weights(model.backbone, path, payload)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(DATA_STATISTICS)}
    state = {k: v for k, v in _state_dict(payload, path).items() if not k.startswith(DATA_STATISTICS)}
    matched = _fitting(state, own, path, "model")
    model.load_state_dict(matched, strict=False)
    return WeightsReport(str(path), len(matched), tuple(k for k in own if k not in matched),
                         tuple(k for k in state if k not in own), part="model")


def load_backbone_weights(backbone: Any, path: str | os.PathLike, payload: Any = None) -> WeightsReport:
    """Load a local state dict into a backbone, with torch.load(weights_only=True).

    The file holds the backbone's state dict, or a whole model's (an instseg checkpoint or
    its `state_dict`), whose `backbone.*` entries are used - so a run's backbone can start
    another. Keys on one side only are reported; a tensor of another shape, or a file of
    which nothing fits, is an error (pretrained weights need the backbone's `width`).
    `payload`: the file's contents when the caller has read them already.
    """
    from instseg.checkpoint import load_weights_only

    path = Path(path)
    own = backbone.state_dict()
    if not own:
        raise ConfigError(f"--weights {path}: this model's encoder is fused to its decoder; "
                          "there is no separate backbone to load weights into")
    if payload is None and not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    payload = load_weights_only(path, what="weights file") if payload is None else payload
    state = _backbone_state(payload, path)
    matched = _fitting(state, own, path)
    backbone.load_state_dict(matched, strict=False)
    return WeightsReport(str(path), len(matched), tuple(k for k in own if k not in matched),
                         tuple(k for k in state if k not in own))


def _fitting(state: dict[str, Any], own: dict[str, Any], path: Path, part: str = "backbone") -> dict[str, Any]:
    """The file's tensors the backbone (or model) has; an error if any has another shape or none fits."""
    matched = {k: v for k, v in state.items() if k in own}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in matched.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensors do not fit the {part}'s shapes, e.g. {wrong[0]} "
                              f"(file vs {part}; a different --width or --embedding-dim?)")
    if not matched:
        raise CheckpointError(f"{path}: none of its {len(state)} tensors fit the {part} (file keys e.g. "
                              f"{', '.join(list(state)[:3])}; {part} keys e.g. {', '.join(list(own)[:3])})")
    return matched


def _backbone_state(payload: Any, path: Path) -> dict[str, Any]:
    """The backbone's entries of a state dict, a model's state dict or an instseg checkpoint."""
    payload = _state_dict(payload, path)
    if any(k.startswith(BACKBONE_PREFIX) for k in payload):
        return {k[len(BACKBONE_PREFIX):]: v for k, v in payload.items() if k.startswith(BACKBONE_PREFIX)}
    return payload


def _state_dict(payload: Any, path: Path) -> dict[str, Any]:
    """A state dict, or an instseg checkpoint's; an error for anything else."""
    import torch

    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return payload
