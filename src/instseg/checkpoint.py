"""Checkpoints: atomic writes, safe loads, and rebuilding a model from one.

A checkpoint holds only tensors and plain data (dicts, lists, str, numbers), so it loads
with `torch.load(weights_only=True)`: a model file never runs code. Files are written to a
temporary sibling, fsync'ed and renamed (`instseg.io.atomic`), so a crash mid-write never
leaves a truncated file.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instseg.io.atomic import atomic_write_bytes
from instseg.instances.clustering import ClusterParams
from instseg.errors import CheckpointError

FORMAT = "instseg.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAMES = ("best.pt", "last.pt")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: run directory holds no checkpoint ({' or '.join(CHECKPOINT_NAMES)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def load_weights_only(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` on the CPU - the one place instseg unpickles a file.

    A file that is not a PyTorch zip archive (random bytes, an ONNX model, a raw pickle) is
    refused before unpickling; one holding objects that could run code, or a truncated one, is
    a CheckpointError naming `path` (`what` says what kind of file it was meant to be). PyTorch's
    own advice (retry with the weights-only check switched off) is never repeated: for a hostile file it is wrong.
    """
    if not _starts_like_zip(path):
        hint = " (an ONNX model: run it with `instseg infer`)" if _looks_like_onnx(path) else ""
        raise CheckpointError(f"{path}: not a {what} (not a PyTorch checkpoint archive){hint}")
    try:
        with warnings.catch_warnings():  # torch may warn with a line of the file's code
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load - it holds objects other than tensors and plain data, "
                              "which could run code when loaded") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: {what} is truncated or corrupted ({type(exc).__name__})") from exc


def _looks_like_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def _starts_like_zip(path: str | os.PathLike) -> bool:
    """PyTorch checkpoints are zip archives: a local-file header first (also when truncated)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load safely (weights_only=True) and validate the format; clear errors otherwise."""
    path = resolve_checkpoint(path)
    payload = load_weights_only(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an instseg checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this instseg "
            f"understands ({FORMAT_VERSION}); upgrade instseg")
    check_schema(payload, path)
    payload["path"] = str(path)
    return payload


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_channels(value: Any, positive: bool) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive) for v in value))


MODEL_FIELDS = {  # what `build_model` reads from a checkpoint's "model" entry, and what is sane there
    "name": lambda v: isinstance(v, str) and bool(v),
    "backbone": lambda v: v is None or isinstance(v, str),
    "width": lambda v: v is None or _is_int(v, 1, 1024),
    "embedding_dim": lambda v: _is_int(v, 1, 4096),
    "max_instances": lambda v: _is_int(v, 1, 2**16 - 1),
    "mean": lambda v: _is_channels(v, positive=False),
    "std": lambda v: _is_channels(v, positive=True),
    "position_scale": lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0),
    "kwargs": lambda v: isinstance(v, dict),
}


def check_schema(payload: dict[str, Any], path: Path) -> None:
    """Everything a checkpoint is used for has the right type and a sane size, before anything
    is built from it: one CheckpointError naming the file and the field otherwise."""
    for key, kind in (("config", dict), ("model", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: field '{key}' is missing or not a {kind.__name__}")
    for key, ok in MODEL_FIELDS.items():
        value = payload["model"].get(key)
        if not ok(value):
            raise CheckpointError(f"{path}: field 'model.{key}' has an invalid value {value!r:.80}")
    bad = next((k for k, v in payload["state_dict"].items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: field 'state_dict' holds a non-tensor entry {bad!r:.80}")
    if not _is_int(payload.get("epoch", 0), 0, 10**9):
        raise CheckpointError(f"{path}: field 'epoch' has an invalid value {payload.get('epoch')!r:.80}")


def load_resume_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run directory's last.pt, which must carry the training state `--resume` needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: not a run directory")
    path = run_dir / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: no last.pt in the run directory, nothing to resume")
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("training"), dict):
        raise CheckpointError(f"{path}: holds weights but no training state (written by an older instseg); "
                              "it cannot be resumed")
    return checkpoint


def capture_rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states as tensors and plain data.

    numpy's and python's states are tuples holding arrays and big ints; stored as int64
    tensors they load with `torch.load(weights_only=True)` and no pickled object is needed.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


def model_record(config: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """What a checkpoint's "model" entry holds: everything `model_from_record` needs to build
    the run's model again (`config`: the run's TrainConfig; mean / std: its data's)."""
    return {"name": config.model, "backbone": config.backbone, "width": config.width,
            "embedding_dim": config.embedding_dim, "max_instances": config.max_instances, "mean": list(mean),
            "std": list(std), "position_scale": config.position_scale, "kwargs": dict(config.model_kwargs)}


def model_from_record(init: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised model as a "model" record describes it: training and loading build
    models this one way."""
    from instseg.models.registry import create_model

    return create_model(init["name"], backbone=init.get("backbone"), width=init.get("width"),
                        embedding_dim=init["embedding_dim"], max_instances=init["max_instances"],
                        mean=tuple(init["mean"]), std=tuple(init["std"]),
                        position_scale=init.get("position_scale") or 0.0,  # absent before it existed
                        **init.get("kwargs", {}))


def build_model(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """Recreate the model a checkpoint describes and load its weights (eval mode, CPU)."""
    from instseg.models.registry import PluginError, RegistryError

    init = checkpoint["model"]
    try:
        model = model_from_record(init)
    except (RegistryError, PluginError) as exc:
        raise CheckpointError(_missing_plugin_message(checkpoint, exc)) from exc
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint.get('path', 'checkpoint')}: weights do not fit model '{init['name']}' "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})")
    return model.eval()


@dataclass
class Trained:
    """A trained model ready to predict: what `load_trained` makes of a checkpoint."""

    model: torch.nn.Module  # eval mode, on the CPU
    checkpoint: dict[str, Any]  # the loaded payload (config, model init, metrics, path)
    image_size: int  # the working size it was trained at
    cluster: ClusterParams  # the run's clustering defaults
    scale: float | None = None  # the run's fixed resize factor (None: shorter side -> image_size)

    @property
    def name(self) -> str:
        return self.checkpoint["model"]["name"]

    @property
    def source(self) -> str:
        return f"{self.checkpoint['path']} (epoch {self.checkpoint['epoch']})"

    @property
    def description(self) -> str:
        return f"{self.name} from {self.source}"


def load_trained(path: str | os.PathLike) -> Trained:
    """A run directory or checkpoint -> its model, working size and clustering defaults."""
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    if not _is_int(config.get("image_size"), 16, 4096):
        raise CheckpointError(f"{checkpoint['path']}: field 'config.image_size' has an invalid value "
                              f"{config.get('image_size')!r:.80}")
    scale = config.get("scale")
    if scale is not None and not (isinstance(scale, (int, float)) and 1 / 64 <= scale <= 64):
        raise CheckpointError(f"{checkpoint['path']}: field 'config.scale' has an invalid value {scale!r:.80}")
    return Trained(build_model(checkpoint), checkpoint, int(config["image_size"]), ClusterParams.from_config(config),
                   None if scale is None else float(scale))


def _missing_plugin_message(checkpoint: dict[str, Any], exc: Exception) -> str:
    """Say which plugin distribution to install (or why the installed one is not loaded)."""
    from instseg.models.discovery import is_builtin
    from instseg.models.registry import get_registry

    where = checkpoint.get("path", "checkpoint")
    plugins = {d: v for d, v in checkpoint.get("plugins", {}).items() if not is_builtin(d)}
    if plugins:
        hints = "; ".join(get_registry().install_hint(d, v) for d, v in plugins.items())
        return f"{where}: model '{checkpoint['model']['name']}' needs plugin(s) not loaded here: {hints} ({exc})"
    return f"{where}: {exc}"
