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

from instseg import limits
from instseg.checkpoint import Checkpoint, ModelRecord, load_checkpoint
from instseg.errors import CheckpointError, ConfigError, PluginError, RegistryError
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
    counter_pooling: str = "image",
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
        position_scale=position_scale, counter_pooling=counter_pooling)


def model_from_record(record: ModelRecord) -> "SegmentationModel":
    """A freshly initialised model as a checkpoint's record describes it: training and loading
    build models this one way, and neither allocates one larger than `limits.MODEL_BYTES`."""
    check_size(planned_model(record), record)
    return _create(record)


def planned_model(record: ModelRecord) -> "SegmentationModel":
    """The model a record describes, on torch's meta device: its shapes, without its memory (a
    record may ask for gigabytes of weights)."""
    import torch

    with torch.device("meta"):
        return _create(record)


def check_size(planned: "torch.nn.Module", record: ModelRecord) -> None:
    """A ConfigError when the parameters and buffers of `planned` would take more than
    `limits.MODEL_BYTES`, saying how many it would hold."""
    tensors = [*planned.parameters(), *planned.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size > limits.MODEL_BYTES:
        count = sum(t.numel() for t in planned.parameters())
        options = ", ".join(f"{k} {v}" for k, v in (("width", record.width), *record.kwargs.items()) if v is not None)
        raise ConfigError(f"model '{record.name}'{f' ({options})' if options else ''} would hold "
                          f"{count / 1e6:.0f}M parameters ({_bytes(size)}), more than the "
                          f"{_bytes(limits.MODEL_BYTES)} instseg builds")


def _bytes(size: int) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def _create(record: ModelRecord) -> "SegmentationModel":
    return create_model(record.name, backbone=record.backbone, width=record.width,
                        embedding_dim=record.embedding_dim, max_instances=record.max_instances,
                        mean=record.mean, std=record.std, position_scale=record.position_scale,
                        counter_pooling=record.counter_pooling, **record.kwargs)


def build_model(checkpoint: Checkpoint) -> "SegmentationModel":
    """The model a checkpoint describes, with its weights (eval mode, CPU). Its size and the fit of
    every weight are checked on the meta device first, so a record that does not match its
    weights, or asks for an absurd model, is one CheckpointError and allocates nothing."""
    where = checkpoint.path or "checkpoint"
    record = checkpoint.model
    try:
        planned = planned_model(record)
        check_size(planned, record)
    except (RegistryError, PluginError) as exc:
        raise CheckpointError(_missing_plugin_message(checkpoint, exc)) from exc
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    except (ValueError, TypeError, RuntimeError) as exc:  # option values the architecture refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{where}: model '{record.name}' cannot be built from its record ({first})") from exc
    check_weights(planned.state_dict(), checkpoint)
    model = _create(record)
    model.load_state_dict(checkpoint.state_dict)
    return model.eval()


def check_weights(expected: Mapping[str, "torch.Tensor"], checkpoint: Checkpoint) -> None:
    """The checkpoint holds exactly the model's tensors, each of the model's shape: else one
    CheckpointError naming the first that differs (a hand-edited record, weights of another model)."""
    where, name, found = checkpoint.path or "checkpoint", checkpoint.model.name, checkpoint.state_dict
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit model '{name}' "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})")
    key = next((k for k, t in expected.items() if found[k].shape != t.shape), None)
    if key is not None:
        raise CheckpointError(f"{where}: weights do not fit model '{name}': tensor '{key}' is "
                              f"{_shape(found[key])}, the model its record describes has {_shape(expected[key])}")


def _shape(tensor: "torch.Tensor") -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


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
