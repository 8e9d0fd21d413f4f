"""What a plugin registers: `ModelSpec`, `BackboneSpec`, a model's `ExportCaps`, `ObjectiveSpec`.

Plain frozen dataclasses that validate themselves, apart from the registry that stores them,
so plugins, the exporter and the CLI share one description of a model without the discovery
machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Union

if TYPE_CHECKING:
    from instseg.models.interfaces import Backbone, Decoder


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"{what} name must be a non-empty string without surrounding spaces, got {name!r}")


@dataclass(frozen=True)
class ExportCaps:
    """What ONNX export of a model supports (`instseg.exporters.onnx` lists the known traps).

    dynamic_hw: H and W may vary at run time (as multiples of the model's `multiple_of`);
        when False the model is exported at one static size and `infer` resizes to it.
    dynamic_batch: the batch dimension may vary.
    exporter: "dynamo" (torch.onnx.export(dynamo=True)) or "legacy" where only it works.
    notes: free text shown to users (why an export is static, which op forced the exporter).
    """

    dynamic_hw: bool = True
    dynamic_batch: bool = True
    exporter: Literal["dynamo", "legacy"] = "dynamo"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.exporter not in ("dynamo", "legacy"):
            raise ValueError(f"ExportCaps.exporter must be 'dynamo' or 'legacy', got {self.exporter!r}")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: Callable[..., "Backbone"]
    description: str = ""
    plugin: str = ""
    distribution: str | None = None

    def __post_init__(self) -> None:
        _check_name("backbone", self.name)
        if not callable(self.factory):
            raise TypeError(f"backbone '{self.name}': factory must be callable, got {type(self.factory).__name__}")


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    decoder: `decoder(backbone, **kwargs) -> Decoder`; the backbone is built first (from
        `default_backbone` or the user's `--backbone`) and passed in, so the decoder sizes
        itself from `backbone.out_channels` / `backbone.strides`.
    default_backbone: the backbone used when none is asked for. `None` means the encoder is
        fused to the decoder (SegNet's pooling indices): the decoder receives the image via
        `ImageInput`, a `width` argument goes to the decoder, and `--backbone` is refused.
    multiple_of: the size H and W must divide by, beyond the backbone's largest stride
        (inputs are padded internally, so any size works).
    export: what its ONNX export supports (ExportCaps).
    aliases: other names that resolve to this model.
    defaults: keyword arguments for the decoder, so variants (e.g. `reseg-coord`) are one line.
    backbone_defaults: keyword arguments for the default backbone only (UNet-CBAM puts CBAM
        in the UNet encoder); a user-chosen `--backbone` does not receive them.
    plugin, distribution: filled in by the registry; a plugin leaves them empty.
    """

    name: str
    decoder: Callable[..., "Decoder"]
    description: str = ""
    default_backbone: str | None = "unet-encoder"
    multiple_of: int = 1
    export: ExportCaps = field(default_factory=ExportCaps)
    aliases: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    backbone_defaults: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""
    distribution: str | None = None

    def __post_init__(self) -> None:
        _check_name("model", self.name)
        if not callable(self.decoder):
            raise TypeError(f"model '{self.name}': decoder must be callable, got {type(self.decoder).__name__}")
        if self.default_backbone is not None:
            _check_name(f"model '{self.name}': default_backbone", self.default_backbone)
        if not isinstance(self.multiple_of, int) or self.multiple_of < 1:
            raise ValueError(f"model '{self.name}': multiple_of must be an int >= 1, got {self.multiple_of!r}")
        if not isinstance(self.export, ExportCaps):
            raise TypeError(f"model '{self.name}': export must be ExportCaps, got {type(self.export).__name__}")
        if isinstance(self.aliases, str):
            raise TypeError(f"model '{self.name}': aliases must be a tuple of names, got the string {self.aliases!r}")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        for alias in self.aliases:
            _check_name(f"model '{self.name}': alias", alias)

    @property
    def fused(self) -> bool:
        return self.default_backbone is None

    def backbone_for(self, requested: str | None) -> str | None:
        """The backbone this model is built on when `requested` (or nothing) is asked for.

        None for a fused model, whatever was requested (`models.factory.create_model` is what
        refuses a `--backbone` for one); otherwise `requested`, or the default when it is
        None or empty.
        """
        if self.fused:
            return None
        return requested or self.default_backbone


EMBEDDING_KINDS = ("discriminative", "spatial")  # how clustering reads an objective's embeddings


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered instance objective: the loss that trains the embedding head, and what its
    embeddings mean to clustering.

    loss: `loss(config) -> nn.Module`, called with the run's TrainConfig; the module maps
        `(SegOutput, labels)` (labels: B x H x W int64, 0 background, -1 ignored) to a dict of
        scalar tensors with the weighted total under "loss" (the others are logged).
    embeddings: which clustering family reads the embedding head: "discriminative" (points
        grouped by k-means / mean-shift: `kmeans`, `meanshift`, `regions`) or "spatial"
        (channels = position + offset, sigma, seed logit: `seeds`). A plugin objective reuses
        one of them, so prediction, ONNX and evaluation need no code from it.
    loss_weights: its loss terms and their default weights (what `--loss-weight` may name).
    embedding_dim: the channel count its embeddings need (None: `--embedding-dim` decides).
    position_scale: the coordinate grid it needs in pixels per unit (None: `--position-scale`).
    """

    name: str
    loss: Callable[..., Any]
    embeddings: str = "discriminative"
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    embedding_dim: int | None = None
    position_scale: float | None = None
    description: str = ""
    plugin: str = ""
    distribution: str | None = None

    def __post_init__(self) -> None:
        _check_name("objective", self.name)
        if not callable(self.loss):
            raise TypeError(f"objective '{self.name}': loss must be callable, got {type(self.loss).__name__}")
        if self.embeddings not in EMBEDDING_KINDS:
            raise ValueError(f"objective '{self.name}': embeddings must be one of {', '.join(EMBEDDING_KINDS)}, "
                             f"got {self.embeddings!r}")
        if not self.loss_weights or not all(isinstance(v, (int, float)) and v >= 0 for v in self.loss_weights.values()):
            raise ValueError(f"objective '{self.name}': loss_weights must name its terms with weights >= 0")
        object.__setattr__(self, "loss_weights", dict(self.loss_weights))
        if self.embedding_dim is not None and (not isinstance(self.embedding_dim, int) or self.embedding_dim < 1):
            raise ValueError(f"objective '{self.name}': embedding_dim must be an int >= 1, got {self.embedding_dim!r}")
        if self.position_scale is not None and not self.position_scale > 0:
            raise ValueError(f"objective '{self.name}': position_scale must be > 0, got {self.position_scale!r}")


Spec = Union[BackboneSpec, ModelSpec, ObjectiveSpec]
