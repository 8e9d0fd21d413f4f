"""Building models: from a registry name, from a checkpoint's record, with weights.

The one place a network is constructed. `registry` only discovers and looks up specs;
`checkpoint` only reads and writes files; this module puts a spec, its options and weights
together. Imports go one way: factory -> registry, weights, checkpoint -> errors.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from math import lcm
from typing import TYPE_CHECKING, Any, Callable, Mapping

from instseg.checkpoint import Checkpoint, ModelRecord, load_checkpoint
from instseg.errors import CheckpointError, PluginError, RegistryError
from instseg.instances.clustering import ClusterParams
from instseg.models.discovery import is_builtin
from instseg.models.registry import Registry, get_registry

if TYPE_CHECKING:
    import torch

    from instseg.models.interfaces import Backbone, SegmentationModel


def create_backbone(name: str, in_channels: int = 3, *, registry: Registry | None = None,
                    **kwargs: Any) -> "Backbone":
    """A registered backbone, its options checked against its factory's signature."""
    spec = (registry or get_registry()).backbone_spec(name)
    _check_options(spec.factory, kwargs, f"backbone '{name}'")
    backbone = spec.factory(in_channels=in_channels, **kwargs)
    _check_backbone(backbone, name)
    return backbone


def create_model(
    name: str,
    *,
    backbone: str | None = None,
    width: int | None = None,
    embedding_dim: int = 32,
    max_instances: int = 20,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    position_scale: float = 0.0,
    backbone_kwargs: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    **decoder_kwargs: Any,
) -> "SegmentationModel":
    """Build a registered model with its three heads.

    `width` sets the base channel count of the network (the backbone's, or the fused
    network's); `decoder_kwargs` reach the architecture's decoder on top of its spec's
    defaults.
    """
    from instseg.models.interfaces import IMAGENET_MEAN, IMAGENET_STD, ImageInput, SegmentationModel

    registry = registry or get_registry()
    spec = registry.model_spec(name)
    sized = {} if width is None else {"width": width}
    if spec.fused and backbone is not None:
        raise RegistryError(f"model '{spec.name}' has its encoder fused to its decoder; it does not take --backbone")
    chosen = spec.backbone_for(backbone)
    if chosen is None:  # fused: the decoder gets the image, and the width
        encoder: Backbone = ImageInput(in_channels=3)
        options = {**spec.defaults, **sized, **decoder_kwargs}
    else:
        defaults = spec.backbone_defaults if backbone in (None, spec.default_backbone) else {}
        encoder = create_backbone(chosen, registry=registry, **{**defaults, **sized, **(backbone_kwargs or {})})
        options = {**spec.defaults, **decoder_kwargs}
    _check_options(spec.decoder, options, f"model '{spec.name}'")
    decoder = spec.decoder(encoder, **options)
    multiple = lcm(int(max(encoder.strides)), int(spec.multiple_of))
    return SegmentationModel(
        encoder, decoder, embedding_dim=embedding_dim, max_instances=max_instances,
        multiple_of=multiple, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD,
        position_scale=position_scale)


def model_from_record(record: ModelRecord) -> "SegmentationModel":
    """A freshly initialised model as a checkpoint's record describes it: training and loading
    build models this one way."""
    return create_model(record.name, backbone=record.backbone, width=record.width,
                        embedding_dim=record.embedding_dim, max_instances=record.max_instances,
                        mean=record.mean, std=record.std, position_scale=record.position_scale, **record.kwargs)


def build_model(checkpoint: Checkpoint) -> "SegmentationModel":
    """The model a checkpoint describes, with its weights (eval mode, CPU)."""
    record = checkpoint.model
    try:
        model = model_from_record(record)
    except (RegistryError, PluginError) as exc:
        raise CheckpointError(_missing_plugin_message(checkpoint, exc)) from exc
    missing, unexpected = model.load_state_dict(checkpoint.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint.path or 'checkpoint'}: weights do not fit model '{record.name}' "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})")
    return model.eval()


@dataclass
class Trained:
    """A trained model ready to predict: what `load_trained` makes of a checkpoint."""

    model: "torch.nn.Module"  # eval mode, on the CPU
    checkpoint: Checkpoint

    @property
    def name(self) -> str:
        return self.checkpoint.model.name

    @property
    def image_size(self) -> int:
        return self.checkpoint.image_size

    @property
    def scale(self) -> float | None:
        return self.checkpoint.scale

    @property
    def cluster(self) -> ClusterParams:
        """The run's clustering defaults."""
        return ClusterParams.from_config(self.checkpoint.config)

    @property
    def description(self) -> str:
        return f"{self.name} from {self.checkpoint.source}"


def load_trained(path: str | os.PathLike) -> Trained:
    """A run directory or checkpoint file -> its model, with the run's working size and clustering."""
    checkpoint = load_checkpoint(path)
    return Trained(build_model(checkpoint), checkpoint)


def _missing_plugin_message(checkpoint: Checkpoint, exc: Exception) -> str:
    """Say which plugin distribution to install (or why the installed one is not loaded)."""
    where = checkpoint.path or "checkpoint"
    plugins = {d: v for d, v in checkpoint.plugins.items() if not is_builtin(d)}
    if plugins:
        hints = "; ".join(get_registry().install_hint(d, v) for d, v in plugins.items())
        return f"{where}: model '{checkpoint.model.name}' needs plugin(s) not loaded here: {hints} ({exc})"
    return f"{where}: {exc}"


def _check_options(factory: Callable[..., Any], options: Mapping[str, Any], what: str) -> None:
    """An option the factory does not take is one clear error, not a TypeError from deep inside."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("backbone", "in_channels")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise RegistryError(f"{what} does not take option(s) {', '.join(unknown)}; "
                            f"it takes: {', '.join(accepted) or 'none'}")


def _check_backbone(backbone: Any, name: str) -> None:
    channels = getattr(backbone, "out_channels", None)
    strides = getattr(backbone, "strides", None)
    if not channels or not strides or len(channels) != len(strides):
        raise RegistryError(
            f"backbone '{name}' must define out_channels and strides of equal, non-zero length "
            f"(got out_channels={channels!r}, strides={strides!r})")
    if list(strides) != sorted(strides):
        raise RegistryError(f"backbone '{name}' strides must be ascending, got {strides!r}")
