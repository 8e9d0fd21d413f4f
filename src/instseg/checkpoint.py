"""What is in a checkpoint, and reading and writing the file.

A checkpoint (`best.pt`, `last.pt`) holds only tensors and plain data, so it loads with
`torch.load(weights_only=True)`: a model file never runs code. It is written to a temporary
sibling, fsync'ed and renamed (`io.atomic`), so a crash mid-write never leaves half a file.
`Checkpoint` is its typed record, with a symmetric `to_payload()` / `from_payload()` (as the
ONNX side's `runtime.metadata.ModelInfo` is):

    format, format_version, instseg_version   who wrote it
    model        `ModelRecord`: how to build the model again (`models.factory.build_model`)
    plugins      the plugin distributions the model comes from {name: version}
    state_dict   the weights
    config       every training option (`TrainConfig` as a dict)
    epoch, step, best_sbd, metrics    where the run was and its last validation
    optimizer, scheduler, training    what `--resume` needs (`train.state.TrainingState`)
    cluster_scores                    `--cluster auto`'s measurement, when made

Checkpoints record model names and plugin distributions, never module paths, so a file
written before a module moved still loads.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from instseg import limits
from instseg.errors import CheckpointError
from instseg.instances.clustering import AUTO, CLUSTER_METHODS
from instseg.io.atomic import atomic_write_bytes
from instseg.io.microscopy import NORMALIZE, valid_channels
from instseg.version import __version__

FORMAT = "instseg.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAMES = ("best.pt", "last.pt")


def _channels(value: Any, positive: bool) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(limits.is_number_in(v, (0 if positive else -math.inf, math.inf)) and (v > 0 or not positive)
                    for v in value))


def _optional(bounds: tuple[float, float]) -> Callable[[Any], bool]:
    return lambda v: v is None or limits.is_number_in(v, bounds)


def _integer(bounds: tuple[int, int]) -> Callable[[Any], bool]:
    return lambda v: limits.is_int_in(v, bounds)


Check = tuple[Callable[[Any], bool], str]  # a field's test, and what it expects in words

MODEL_FIELDS: dict[str, Check] = {  # what each field of a "model" record must be
    "name": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "backbone": (lambda v: v is None or isinstance(v, str), "a backbone name or null"),
    "width": (lambda v: v is None or limits.is_int_in(v, limits.WIDTH), f"null or {limits.describe(limits.WIDTH)}"),
    "embedding_dim": (_integer(limits.EMBEDDING_DIM), limits.describe(limits.EMBEDDING_DIM)),
    "max_instances": (_integer(limits.MAX_INSTANCES), limits.describe(limits.MAX_INSTANCES)),
    "mean": (lambda v: _channels(v, positive=False), "three finite numbers"),
    "std": (lambda v: _channels(v, positive=True), "three finite positive numbers"),
    "position_scale": (_optional((0, math.inf)), "a finite number, 0 or more"),
    "counter_pooling": (lambda v: v is None or v in limits.COUNTER_POOLING,
                        f"null or one of {', '.join(limits.COUNTER_POOLING)}"),
    "kwargs": (lambda v: isinstance(v, dict), "a mapping of architecture options"),
    "object_size": (_optional(limits.OBJECT_SIZE), f"null or {limits.describe(limits.OBJECT_SIZE)}"),
    "normalize": (lambda v: v is None or v in NORMALIZE, f"null or one of {', '.join(NORMALIZE)}"),
    "channels": (lambda v: v is None or valid_channels(v), "null or 1 to 3 channel indices from 0"),
}


def config_fields(config: dict[str, Any]) -> dict[str, Check]:
    """What the "config" fields that loading a model reads must be, where present (training
    validated them; a hand-edited file may not have been): the working size and scale, and what
    the run's clustering defaults are made of (`instances.clustering.ClusterParams.from_config`)."""
    scales = limits.scale_range(config.get("image_size"))
    return {
        "image_size": (_integer(limits.IMAGE_SIZE), f"{limits.describe(limits.IMAGE_SIZE)} pixels"),
        "scale": (_optional(scales), f"null or {limits.describe(scales)} (at most image_size / {limits.MIN_TILE})"),
        "max_instances": (_integer(limits.MAX_INSTANCES), limits.describe(limits.MAX_INSTANCES)),
        "delta_d": (lambda v: limits.is_number_in(v, (0, math.inf)) and v > 0, "a finite number above 0"),
        "seed": (_integer(limits.SEED), limits.describe(limits.SEED)),
        "cluster": (lambda v: v in (AUTO, *CLUSTER_METHODS), f"one of {', '.join((AUTO, *CLUSTER_METHODS))}"),
    }


def check_field(where: str | os.PathLike, name: str, value: Any, check: Check) -> None:
    """One CheckpointError naming the file, the field, its value and what it should be."""
    ok, expected = check
    if not ok(value):
        raise CheckpointError(f"{where}: field '{name}' has an invalid value {value!r:.80} (expected {expected})")


@dataclass(frozen=True)
class ModelRecord:
    """How to build a run's model again: registry name, options, and its data's normalisation."""

    name: str
    embedding_dim: int
    max_instances: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    backbone: str | None = None
    width: int | None = None
    position_scale: float = 0.0
    counter_pooling: str = "image"  # what the counter head pools over (limits.COUNTER_POOLING)
    kwargs: dict[str, Any] = field(default_factory=dict)
    object_size: float | None = None  # its training objects' typical size at the working scale (instances.size)
    normalize: str = "fixed"  # how its images' intensities are scaled (io.microscopy; absent before: fixed)
    channels: tuple[int, ...] | None = None  # the channels of a file that feed the network (None: grey / RGB)

    @classmethod
    def from_config(cls, config: Any, mean: tuple[float, ...], std: tuple[float, ...],
                    object_size: float | None = None) -> "ModelRecord":
        """The record of a run (`config`: its TrainConfig; mean / std / object size: its data's)."""
        return cls(name=config.model, embedding_dim=config.embedding_dim, max_instances=config.max_instances,
                   mean=tuple(mean), std=tuple(std), backbone=config.backbone, width=config.width,
                   position_scale=config.position_scale, counter_pooling=config.counter_pooling,
                   kwargs=dict(config.model_kwargs), object_size=object_size,
                   normalize=config.normalize, channels=None if config.channels is None else tuple(config.channels))

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "backbone": self.backbone, "width": self.width,
                "embedding_dim": self.embedding_dim, "max_instances": self.max_instances, "mean": list(self.mean),
                "std": list(self.std), "position_scale": self.position_scale,
                "counter_pooling": self.counter_pooling, "kwargs": dict(self.kwargs),
                "object_size": self.object_size, "normalize": self.normalize,
                "channels": None if self.channels is None else list(self.channels)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: str | os.PathLike = "checkpoint") -> "ModelRecord":
        """Inverse of `to_payload`; every field checked first (a CheckpointError names the bad one)."""
        for key, check in MODEL_FIELDS.items():
            check_field(where, f"model.{key}", payload.get(key), check)
        return cls(name=payload["name"], embedding_dim=payload["embedding_dim"],
                   max_instances=payload["max_instances"], mean=tuple(payload["mean"]), std=tuple(payload["std"]),
                   backbone=payload.get("backbone"), width=payload.get("width"),
                   position_scale=float(payload.get("position_scale") or 0.0),  # absent before it existed
                   counter_pooling=payload.get("counter_pooling") or "image",  # absent before: the whole image
                   kwargs=dict(payload["kwargs"]), object_size=payload.get("object_size"),  # absent before
                   normalize=payload.get("normalize") or "fixed",  # absent before: scaled by dtype
                   channels=None if payload.get("channels") is None else tuple(payload["channels"]))


@dataclass
class Checkpoint:
    """A checkpoint file's contents, typed (see the module docstring for each field)."""

    model: ModelRecord
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    plugins: dict[str, str] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    best_sbd: float = -1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    training: dict[str, Any] | None = None  # None: weights only (cannot be resumed)
    cluster_scores: dict[str, float] | None = None
    instseg_version: str = __version__
    path: str = ""  # where it was read from (not stored)

    @property
    def image_size(self) -> int:
        """The working size the model was trained at (checked when read)."""
        if "image_size" not in self.config:
            raise CheckpointError(f"{self.path or 'checkpoint'}: field 'config.image_size' is missing")
        return int(self.config["image_size"])

    @property
    def scale(self) -> float | None:
        """The run's fixed resize factor (None: shorter side -> image_size)."""
        scale = self.config.get("scale")
        return None if scale is None else float(scale)

    @property
    def source(self) -> str:
        return f"{self.path} (epoch {self.epoch})"

    def with_config(self, **changes: Any) -> "Checkpoint":
        """A copy whose config has `changes` applied."""
        return replace(self, config={**self.config, **changes})

    def to_payload(self) -> dict[str, Any]:
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "instseg_version": self.instseg_version,
                   "model": self.model.to_payload(), "plugins": dict(self.plugins), "state_dict": self.state_dict,
                   "config": self.config, "epoch": self.epoch, "step": self.step, "best_sbd": self.best_sbd,
                   "metrics": self.metrics}
        optional = {"optimizer": self.optimizer, "scheduler": self.scheduler, "training": self.training,
                    "cluster_scores": self.cluster_scores}
        return {**payload, **{k: v for k, v in optional.items() if v is not None}}

    @classmethod
    def from_payload(cls, payload: Any, path: str | os.PathLike) -> "Checkpoint":
        """Inverse of `to_payload`: the format and every field checked before anything is built."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not an instseg checkpoint")
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {payload['format_version']} is newer than this "
                                  f"instseg understands ({FORMAT_VERSION}); upgrade instseg")
        _check_fields(payload, path)
        return cls(model=ModelRecord.from_payload(payload["model"], path), state_dict=payload["state_dict"],
                   config=payload["config"], plugins=dict(payload.get("plugins") or {}),
                   epoch=payload.get("epoch", 0), step=payload.get("step", 0),
                   best_sbd=payload.get("best_sbd", -1.0), metrics=payload.get("metrics") or {},
                   optimizer=payload.get("optimizer"), scheduler=payload.get("scheduler"),
                   training=payload.get("training") if isinstance(payload.get("training"), dict) else None,
                   cluster_scores=payload.get("cluster_scores"),
                   instseg_version=str(payload.get("instseg_version", "")), path=str(path))


def _check_fields(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Everything a checkpoint is used for has the right type and a sane size: one
    CheckpointError naming the file and the field otherwise."""
    for key, kind in (("config", dict), ("model", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: field '{key}' is missing or not a {kind.__name__}")
    bad = next((k for k, v in payload["state_dict"].items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: field 'state_dict' holds a non-tensor entry {bad!r:.80}")
    check_field(path, "epoch", payload.get("epoch", 0), (_integer(limits.EPOCH), limits.describe(limits.EPOCH)))
    config = payload["config"]
    for key, check in config_fields(config).items():
        if key in config:
            check_field(path, f"config.{key}", config[key], check)


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    buffer = io.BytesIO()
    torch.save(checkpoint.to_payload(), buffer)
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


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint file or run directory, loaded safely (weights_only=True) and validated."""
    path = resolve_checkpoint(path)
    return Checkpoint.from_payload(load_weights_only(path), path)


def load_resume_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """A run directory's last.pt, which must carry the training state `--resume` needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: not a run directory")
    path = run_dir / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: no last.pt in the run directory, nothing to resume")
    checkpoint = load_checkpoint(path)
    if checkpoint.training is None:
        raise CheckpointError(f"{path}: holds weights but no training state (written by an older instseg); "
                              "it cannot be resumed")
    return checkpoint


def load_weights_only(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` on the CPU - the one place instseg unpickles a file.

    A file that is not a PyTorch zip archive (random bytes, an ONNX model, a raw pickle) is
    refused before unpickling; one holding objects that could run code, or a truncated one, is
    a CheckpointError naming `path` (`what` says what kind of file it was meant to be). PyTorch's
    own advice (retry with the weights-only check switched off) is never repeated: for a hostile file it is wrong.
    """
    if not _starts_like_zip(path):
        hint = " (an ONNX model: run it with `instseg infer`)" if Path(path).suffix.lower() == ".onnx" else ""
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


def _starts_like_zip(path: str | os.PathLike) -> bool:
    """PyTorch checkpoints are zip archives: a local-file header first (also when truncated)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
