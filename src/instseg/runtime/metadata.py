"""What an instseg ONNX file says about itself: the `metadata_props` written at export.

The exporter builds a `ModelInfo` and stores `to_props()`; `instseg infer` reads it back with
`from_props()`. Everything inference needs is here (the working size, the clustering
defaults, the size constraints of the graph), so an ONNX file is all a deployment ships.
Normalisation (mean/std) is inside the graph; it is recorded for people, not applied again.

Keys are prefixed `instseg.`; values are strings (JSON for lists and mappings), so Netron
and `onnx.load(...).metadata_props` show them as they are. Torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from instseg import limits
from instseg.errors import CheckpointError, ConfigError
from instseg.instances.clustering import ClusterParams
from instseg.io.microscopy import NORMALIZE, valid_channels

FORMAT_KEY = "instseg.format"
FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("semantic", "embedding", "count")
PRECISIONS = ("fp32", "fp16", "int8")  # int8: statically quantised (exporters.quantize)


@dataclass(frozen=True)
class ModelInfo:
    """One exported model: its provenance and its contract with the runtime.

    multiple_of: the graph of a dynamic model accepts H and W that divide by this (the
        runtime pads; the PyTorch model pads internally to the same multiple).
    static_size: (H, W) of a graph fixed to one size (the runtime resizes every image to
        it and maps the labels back), or None when H and W are dynamic.
    dynamic_batch: whether the batch dimension may vary (else the runtime feeds one image
        at a time).
    """

    model: str
    backbone: str | None
    instseg_version: str
    plugins: Mapping[str, str]  # distribution -> version the model came from
    exporter: str  # "dynamo" or "legacy" (torch.onnx.export's dynamo flag)
    torch_version: str
    opset: int
    precision: str
    exported: str  # ISO 8601 UTC
    source: str  # checkpoint path and epoch
    embedding_dim: int
    max_instances: int
    image_size: int  # working size: an image's shorter side is resized to it
    multiple_of: int
    static_size: tuple[int, int] | None
    dynamic_batch: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cluster: ClusterParams = field(default_factory=ClusterParams)
    scale: float | None = None  # fixed resize factor instead of shorter side -> image_size
    object_size: float | None = None  # training objects' typical size at the working scale (instances.size)
    normalize: str = "fixed"  # how image intensities become [0, 1] before the graph (io.microscopy)
    channels: tuple[int, ...] | None = None  # the channels of a file that feed the graph (None: grey / RGB)
    objective: str = "discriminative"  # the instance objective it was trained with (its embeddings: cluster.embeddings)

    @property
    def dynamic_hw(self) -> bool:
        return self.static_size is None

    def describe(self) -> str:
        """One line: model, shapes the graph takes, precision, exporter."""
        if self.static_size is None:
            shape = f"dynamic H, W (multiples of {self.multiple_of})"
        else:
            shape = f"static {self.static_size[0]}x{self.static_size[1]}"
        batch = "dynamic batch" if self.dynamic_batch else "batch 1"
        return f"{self.model}, {shape}, {batch}, {self.precision}, {self.exporter} exporter, opset {self.opset}"

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` of the exported file."""
        return {
            FORMAT_KEY: str(FORMAT_VERSION),
            "instseg.model": self.model,
            "instseg.backbone": self.backbone or "",
            "instseg.version": self.instseg_version,
            "instseg.plugins": json.dumps(dict(self.plugins), sort_keys=True),
            "instseg.exporter": self.exporter,
            "instseg.torch": self.torch_version,
            "instseg.opset": str(self.opset),
            "instseg.precision": self.precision,
            "instseg.exported": self.exported,
            "instseg.source": self.source,
            "instseg.input": json.dumps({"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                                         "range": [0, 1], "normalised": "inside the graph"}),
            "instseg.outputs": json.dumps(list(OUTPUT_NAMES)),
            "instseg.dynamic_axes": json.dumps({"batch": self.dynamic_batch, "height": self.dynamic_hw,
                                                "width": self.dynamic_hw}),
            "instseg.multiple_of": str(self.multiple_of),
            "instseg.static_size": "" if self.static_size is None else f"{self.static_size[0]}x{self.static_size[1]}",
            "instseg.embedding_dim": str(self.embedding_dim),
            "instseg.max_instances": str(self.max_instances),
            "instseg.image_size": str(self.image_size),
            "instseg.scale": "" if self.scale is None else repr(self.scale),
            "instseg.object_size": "" if self.object_size is None else repr(self.object_size),
            "instseg.mean": json.dumps(list(self.mean)),
            "instseg.std": json.dumps(list(self.std)),
            "instseg.cluster": json.dumps(asdict(self.cluster), sort_keys=True),
            "instseg.normalize": self.normalize,
            "instseg.channels": "" if self.channels is None else json.dumps(list(self.channels)),
            "instseg.objective": self.objective,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> "ModelInfo":
        """Parse `metadata_props`; a file without instseg keys, or with broken ones, is a
        CheckpointError naming `where`."""
        if FORMAT_KEY not in props:
            raise CheckpointError(f"{where}: an ONNX model without instseg metadata (not written by "
                                  "`instseg export`); export a run with `instseg export RUN --onnx`")
        reader = _Reader(props, where)
        version = reader.integer(FORMAT_KEY, (1, 10**6))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{where}: instseg ONNX format {version} is newer than this instseg understands "
                                  f"({FORMAT_VERSION}); upgrade instseg")
        dynamic = reader.json("instseg.dynamic_axes", dict)
        static = reader.text("instseg.static_size")
        image_size = reader.integer("instseg.image_size", limits.IMAGE_SIZE)
        precision = reader.text("instseg.precision")
        if precision not in PRECISIONS:
            raise CheckpointError(f"{where}: metadata instseg.precision is {precision!r}, expected one of "
                                  f"{', '.join(PRECISIONS)}")
        return cls(
            model=reader.text("instseg.model"),
            backbone=reader.text("instseg.backbone") or None,
            instseg_version=reader.text("instseg.version"),
            plugins=reader.json("instseg.plugins", dict),
            exporter=reader.text("instseg.exporter"),
            torch_version=reader.text("instseg.torch"),
            opset=reader.integer("instseg.opset", (1, 1000)),
            precision=precision,
            exported=reader.text("instseg.exported"),
            source=reader.text("instseg.source"),
            embedding_dim=reader.integer("instseg.embedding_dim", limits.EMBEDDING_DIM),
            max_instances=reader.integer("instseg.max_instances", limits.MAX_INSTANCES),
            image_size=image_size,
            multiple_of=reader.integer("instseg.multiple_of", limits.MULTIPLE_OF),
            static_size=_parse_size(static, where) if static else None,
            dynamic_batch=bool(dynamic.get("batch", False)),
            mean=reader.channels("instseg.mean", positive=False),
            std=reader.channels("instseg.std", positive=True),
            cluster=_cluster(reader.json("instseg.cluster", dict), where),
            scale=reader.optional_number("instseg.scale", limits.scale_range(image_size)),  # absent before
            object_size=reader.optional_number("instseg.object_size", limits.OBJECT_SIZE),  # absent before
            normalize=reader.choice("instseg.normalize", NORMALIZE),  # absent before: fixed
            channels=reader.optional_channels("instseg.channels"),  # absent before: grey / RGB
            objective=props.get("instseg.objective") or "discriminative",  # absent before: the only one
        )


class _Reader:
    """Typed access to metadata values; anything missing or malformed names the key."""

    def __init__(self, props: Mapping[str, str], where: str) -> None:
        self.props = props
        self.where = where

    def text(self, key: str) -> str:
        if key not in self.props:
            raise CheckpointError(f"{self.where}: instseg metadata lacks '{key}' (a damaged or hand-edited file?)")
        return self.props[key]

    def integer(self, key: str, bounds: tuple[int, int]) -> int:
        """An integer value within `bounds` (inclusive)."""
        value = self.text(key)
        try:
            number = int(value)
        except ValueError:
            raise CheckpointError(f"{self.where}: metadata {key} is {value!r}, expected an integer") from None
        if not limits.is_int_in(number, bounds):
            raise CheckpointError(f"{self.where}: metadata {key} is {number}, expected {limits.describe(bounds)}")
        return number

    def optional_number(self, key: str, bounds: tuple[float, float]) -> float | None:
        """An optional number within `bounds`: absent or empty (files before it) is None."""
        value = self.props.get(key, "")
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not limits.is_number_in(number, bounds):
            raise CheckpointError(f"{self.where}: metadata {key} is {value!r}, expected a number in "
                                  f"{limits.describe(bounds)}")
        return number

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        """One of `allowed`; absent or empty (files before the key existed) is the first."""
        value = self.props.get(key) or allowed[0]
        if value not in allowed:
            raise CheckpointError(f"{self.where}: metadata {key} is {value!r}, expected one of {', '.join(allowed)}")
        return value

    def optional_channels(self, key: str) -> tuple[int, ...] | None:
        """Channel indices (`io.microscopy.valid_channels`); absent or empty is None."""
        if not self.props.get(key):
            return None
        values = self.json(key, list)
        if not valid_channels(values):
            raise CheckpointError(f"{self.where}: metadata {key} is {values!r}, expected 1 to 3 channel indices "
                                  "from 0")
        return tuple(values)

    def channels(self, key: str, positive: bool) -> tuple[float, ...]:
        """Three finite per-channel numbers (positive ones for a std)."""
        values = self.json(key, list)
        ok = len(values) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
                                      for v in values)
        if not ok:
            raise CheckpointError(f"{self.where}: metadata {key} is {values!r}, expected three finite "
                                  f"{'positive ' if positive else ''}numbers")
        return tuple(float(v) for v in values)

    def json(self, key: str, kind: type) -> Any:
        value = self.text(key)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, kind):
            raise CheckpointError(f"{self.where}: metadata {key} is {value!r}, expected a JSON {kind.__name__}")
        return parsed


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (or one number for a square) -> (H, W); ValueError when it is not that."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{text!r} is not a size like 256x320")
    return int(parts[0]), int(parts[1])


def _parse_size(text: str, where: str) -> tuple[int, int]:
    """A static graph's H x W, each side a working size (`limits.IMAGE_SIZE`)."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise CheckpointError(f"{where}: metadata instseg.static_size: {exc}") from None
    if not all(limits.is_int_in(side, limits.IMAGE_SIZE) for side in size):
        raise CheckpointError(f"{where}: metadata instseg.static_size is {text!r:.40}, expected H and W within "
                              f"{limits.describe(limits.IMAGE_SIZE)}")
    return size


# The ranges of the clustering defaults a file may set: each bounds the work clustering does.
CLUSTER_INTEGERS = {"sample_size": limits.CLUSTER_SAMPLE_SIZE, "iterations": limits.CLUSTER_ITERATIONS,
                    "restarts": limits.CLUSTER_RESTARTS, "max_clusters": limits.CLUSTER_MAX_CLUSTERS,
                    "min_size": limits.CLUSTER_MIN_SIZE, "seed": limits.SEED}
CLUSTER_FLAGS = ("fill_holes", "full_resolution")


def _cluster(values: Mapping[str, Any], where: str) -> ClusterParams:
    """ClusterParams from the stored fields it knows (a newer file may store more), each number
    within its range and each flag a JSON boolean."""
    known = {f.name for f in fields(ClusterParams)}
    chosen = {k: v for k, v in values.items() if k in known}
    for key, value in chosen.items():
        if key in CLUSTER_INTEGERS and not limits.is_int_in(value, CLUSTER_INTEGERS[key]):
            expected = limits.describe(CLUSTER_INTEGERS[key])
        elif key == "bandwidth" and not limits.is_number_in(value, (0, math.inf)):
            expected = "a finite number above 0"
        elif key in CLUSTER_FLAGS and not isinstance(value, bool):
            expected = "true or false"
        else:
            continue
        raise CheckpointError(f"{where}: metadata instseg.cluster {key} is {value!r:.40}, expected {expected}")
    try:
        return ClusterParams(**chosen)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{where}: metadata instseg.cluster: {exc}") from None
