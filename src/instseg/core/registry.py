"""The model registry: pluggy hooks, entry-point discovery, isolation of broken plugins.

Every architecture - built-in or third-party - arrives the same way: a module named in the
`instseg` entry-point group implements `register_backbones(register)` and/or
`register_models(register)`. Discovery is lazy and happens once per process (spawned
DataLoader workers and DDP ranks discover on first use). Each plugin's hooks are called on
their own, so a plugin that fails to import or raises inside a hook is recorded as failed
and everything else keeps working; a name registered twice is an error naming both plugins.

Environment:
  INSTSEG_DISABLE_PLUGINS=1   load the built-in plugins only
  INSTSEG_PLUGINS=a,b         load built-ins plus only these third-party distributions
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import pickle
import re
import threading
import traceback
import zipfile
from dataclasses import dataclass, field, replace
from importlib import metadata
from math import lcm
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping

import pluggy

from instseg.errors import CheckpointError, ConfigError, InstsegError

if TYPE_CHECKING:
    from instseg.core.interfaces import Backbone, Decoder, SegmentationModel

PROJECT = "instseg"
BUILTIN_DISTRIBUTION = "instseg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginError(InstsegError):
    """A plugin failed to load or register; the message names its distribution."""


class RegistryError(InstsegError, LookupError):
    """An unknown name, a name registered twice, or an invalid combination."""


class HookSpecs:
    """The hooks a plugin may implement. Both receive a `register` callback."""

    @hookspec
    def register_backbones(self, register: Callable[..., None]) -> None:
        """Call `register(name, factory, description="")` for each backbone.

        `factory(in_channels: int = 3, **kwargs) -> Backbone`.
        """

    @hookspec
    def register_models(self, register: Callable[["ModelSpec"], None]) -> None:
        """Call `register(ModelSpec(...))` for each model."""


HOOK_NAMES = ("register_backbones", "register_models")


@dataclass(frozen=True)
class ExportCaps:
    """What ONNX export of a model supports (see DESIGN.md for the known traps).

    dynamic_hw: H and W may vary at run time (as multiples of the model's `multiple_of`);
        when False the model is exported at one static size and `infer` resizes to it.
    dynamic_batch: the batch dimension may vary.
    exporter: "dynamo" (torch.onnx.export(dynamo=True)) or "legacy" where only it works.
    """

    dynamic_hw: bool = True
    dynamic_batch: bool = True
    exporter: Literal["dynamo", "legacy"] = "dynamo"
    notes: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: Callable[..., "Backbone"]
    description: str = ""
    plugin: str = ""
    distribution: str | None = None


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
    defaults: keyword arguments for the decoder, so variants (e.g. `reseg-coord`) are one line.
    backbone_defaults: keyword arguments for the default backbone only (UNet-CBAM puts CBAM
        in the UNet encoder); a user-chosen `--backbone` does not receive them.
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

    @property
    def fused(self) -> bool:
        return self.default_backbone is None


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, for `instseg plugins` and error messages."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        dist = f"{self.distribution} {self.version or ''}".strip() if self.distribution else "in-process"
        return f"plugin '{self.name}' ({dist})"


def _normalise_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _describe(obj: Any, given: str) -> str:
    if given:
        return given
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({frame[0].filename.rsplit(os.sep, 1)[-1]}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Registry:
    """Backbones and models contributed by plugins, discovered lazily once."""

    def __init__(self, *, autoload: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(HookSpecs)
        self._backbones: dict[str, BackboneSpec] = {}
        self._models: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        self._plugins: dict[str, PluginInfo] = {}
        self._autoload = autoload
        self._loaded = not autoload
        self._lock = threading.RLock()

    # -- discovery -------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for ep in self._selected_entry_points():
                self._load_entry_point(ep)

    def _selected_entry_points(self) -> list[metadata.EntryPoint]:
        eps = list(metadata.entry_points(group=PROJECT))
        disabled = os.environ.get("INSTSEG_DISABLE_PLUGINS", "").strip().lower() in {"1", "true", "yes"}
        wanted = {
            _normalise_dist(n) for n in os.environ.get("INSTSEG_PLUGINS", "").split(",") if n.strip()
        }

        def dist_of(ep: metadata.EntryPoint) -> str:
            return _normalise_dist(ep.dist.name) if ep.dist is not None else ""

        builtin = sorted((ep for ep in eps if dist_of(ep) == BUILTIN_DISTRIBUTION), key=lambda e: e.name)
        others = sorted((ep for ep in eps if dist_of(ep) != BUILTIN_DISTRIBUTION), key=lambda e: (dist_of(e), e.name))
        if disabled:
            others = []
        elif wanted:
            others = [ep for ep in others if dist_of(ep) in wanted]
        seen: set[tuple[str, str]] = set()
        unique = []
        for ep in builtin + others:  # a dist on sys.path twice would list its entry points twice
            key = (dist_of(ep), ep.name)
            if key not in seen:
                seen.add(key)
                unique.append(ep)
        return unique

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else None
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist,
            version=ep.dist.version if ep.dist is not None else None,
            builtin=dist is not None and _normalise_dist(dist) == BUILTIN_DISTRIBUTION,
        )
        if ep.name in self._plugins:
            other = self._plugins[ep.name]
            info.error = f"entry point name '{ep.name}' is already used by {other.label}"
            self._plugins[f"{ep.name}@{dist}"] = info
            return
        self._plugins[ep.name] = info
        try:
            plugin = ep.load()
        except Exception as exc:  # isolate: a broken plugin must not break the CLI
            info.error = f"import failed: {_short_error(exc)}"
            return
        self._register_plugin_object(plugin, info)

    def register_plugin(self, plugin: Any, name: str | None = None) -> PluginInfo:
        """Register a plugin object in-process (tests, notebooks). Errors raise PluginError."""
        with self._lock:
            self.ensure_loaded()
            name = name or getattr(plugin, "__name__", type(plugin).__name__)
            if name in self._plugins:
                raise PluginError(f"a plugin named '{name}' is already registered ({self._plugins[name].label})")
            info = PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)),
                              distribution=None, version=None, builtin=False)
            self._plugins[name] = info
            self._register_plugin_object(plugin, info)
            if info.error:
                raise PluginError(f"{info.label} failed: {info.error}")
            return info

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered (tests use this to clean up)."""
        with self._lock:
            info = self._plugins.pop(name, None)
            if info is None:
                raise RegistryError(f"no plugin named '{name}'")
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            self._backbones = {k: v for k, v in self._backbones.items() if v.plugin != name}
            self._models = {k: v for k, v in self._models.items() if v.plugin != name}
            self._aliases = {a: m for a, m in self._aliases.items() if m in self._models}

    def _register_plugin_object(self, plugin: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook signatures here
            info.error = f"invalid hook implementation: {_short_error(exc)}"
            return
        info.hooks = [h for h in HOOK_NAMES if any(
            impl.plugin_name == info.name for impl in getattr(self.pm.hook, h).get_hookimpls())]
        for hook_name in HOOK_NAMES:
            if hook_name in info.hooks and info.error is None:
                self._call_hook(hook_name, info)

    def _call_hook(self, hook_name: str, info: PluginInfo) -> None:
        """Call one plugin's hook; commit its registrations only if the whole hook succeeds."""
        staged: list[BackboneSpec | ModelSpec] = []
        if hook_name == "register_backbones":
            def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
                staged.append(BackboneSpec(name, factory, _describe(factory, description),
                                           info.name, info.distribution))
        else:
            def register(spec: ModelSpec) -> None:  # type: ignore[misc]
                if not isinstance(spec, ModelSpec):
                    raise TypeError(f"register_models expects ModelSpec, got {type(spec).__name__}")
                staged.append(replace(spec, plugin=info.name, distribution=info.distribution,
                                       description=_describe(spec.decoder, spec.description)))
        others = [p for p in self.pm.get_plugins() if self.pm.get_name(p) != info.name]
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        try:
            caller(register=register)
            for item in staged:
                self._check_free(item)
        except Exception as exc:  # isolate: record, keep the rest of the registry intact
            info.error = f"{hook_name} failed: {_short_error(exc)}"
            return
        for item in staged:
            if isinstance(item, BackboneSpec):
                self._backbones[item.name] = item
                info.registered.append(f"backbone:{item.name}")
            else:
                self._models[item.name] = item
                for alias in item.aliases:
                    self._aliases[alias] = item.name
                info.registered.append(f"model:{item.name}")

    def _check_free(self, item: BackboneSpec | ModelSpec) -> None:
        if isinstance(item, BackboneSpec):
            owner = self._backbones.get(item.name)
            if owner is not None:
                raise RegistryError(
                    f"backbone '{item.name}' is registered twice: by {self._plugins[owner.plugin].label} "
                    f"and by {self._plugins[item.plugin].label}")
            return
        for name in (item.name, *item.aliases):
            owner_name = self._aliases.get(name, name)
            owner = self._models.get(owner_name)
            if owner is not None:
                raise RegistryError(
                    f"model name '{name}' is registered twice: by {self._plugins[owner.plugin].label} "
                    f"and by {self._plugins[item.plugin].label}")

    # -- queries ---------------------------------------------------------------------
    @property
    def plugins(self) -> Mapping[str, PluginInfo]:
        self.ensure_loaded()
        return MappingProxyType(self._plugins)

    def failed_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def list_models(self, pattern: str | None = None) -> list[str]:
        self.ensure_loaded()
        return _filter(self._models, pattern)

    def list_backbones(self, pattern: str | None = None) -> list[str]:
        self.ensure_loaded()
        return _filter(self._backbones, pattern)

    def model_spec(self, name: str) -> ModelSpec:
        self.ensure_loaded()
        key = self._aliases.get(name, name)
        if key not in self._models:
            raise RegistryError(self._unknown("model", name, [*self._models, *self._aliases]))
        return self._models[key]

    def backbone_spec(self, name: str) -> BackboneSpec:
        self.ensure_loaded()
        if name not in self._backbones:
            raise RegistryError(self._unknown("backbone", name, self._backbones))
        return self._backbones[name]

    def _unknown(self, kind: str, name: str, known: Iterable[str]) -> str:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3)
        msg = f"unknown {kind} '{name}'"
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(known)}"
        failed = self.failed_plugins()
        if failed:
            msg += " (plugins that failed to load: " + "; ".join(f"{p.label}: {p.error}" for p in failed) + ")"
        return msg

    # -- construction ----------------------------------------------------------------
    def create_backbone(self, name: str, in_channels: int = 3, **kwargs: Any) -> "Backbone":
        spec = self.backbone_spec(name)
        _check_options(spec.factory, kwargs, f"backbone '{name}'")
        backbone = spec.factory(in_channels=in_channels, **kwargs)
        _check_backbone(backbone, name)
        return backbone

    def create_model(
        self,
        name: str,
        *,
        backbone: str | None = None,
        width: int | None = None,
        embedding_dim: int = 32,
        max_instances: int = 20,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        **decoder_kwargs: Any,
    ) -> "SegmentationModel":
        """Build a registered model with its three heads.

        `width` sets the base channel count of the network (the backbone's, or the fused
        network's); `decoder_kwargs` reach the architecture's decoder on top of its spec's
        defaults.
        """
        from instseg.core.interfaces import IMAGENET_MEAN, IMAGENET_STD, ImageInput, SegmentationModel

        spec = self.model_spec(name)
        sized = {} if width is None else {"width": width}
        if spec.fused:
            if backbone is not None:
                raise RegistryError(
                    f"model '{spec.name}' has its encoder fused to its decoder; it does not take --backbone")
            encoder: Backbone = ImageInput(in_channels=3)
            options = {**spec.defaults, **sized, **decoder_kwargs}
            _check_options(spec.decoder, options, f"model '{spec.name}'")
            decoder = spec.decoder(encoder, **options)
        else:
            defaults = spec.backbone_defaults if backbone in (None, spec.default_backbone) else {}
            encoder = self.create_backbone(backbone or spec.default_backbone,
                                           **{**defaults, **sized, **(backbone_kwargs or {})})
            options = {**spec.defaults, **decoder_kwargs}
            _check_options(spec.decoder, options, f"model '{spec.name}'")
            decoder = spec.decoder(encoder, **options)
        multiple = lcm(int(max(encoder.strides)), int(spec.multiple_of))
        return SegmentationModel(
            encoder, decoder, embedding_dim=embedding_dim, max_instances=max_instances,
            multiple_of=multiple, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD)


def _filter(names: Iterable[str], pattern: str | None) -> list[str]:
    names = sorted(names)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


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


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, discovered on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
    _registry.ensure_loaded()
    return _registry


def reset_registry() -> None:
    """Forget the registry so the next call rediscovers (tests change entry points/env)."""
    global _registry
    with _registry_lock:
        _registry = None


def list_models(pattern: str | None = None) -> list[str]:
    return get_registry().list_models(pattern)


def list_backbones(pattern: str | None = None) -> list[str]:
    return get_registry().list_backbones(pattern)


def create_model(name: str, **kwargs: Any) -> "SegmentationModel":
    return get_registry().create_model(name, **kwargs)


def create_backbone(name: str, in_channels: int = 3, **kwargs: Any) -> "Backbone":
    return get_registry().create_backbone(name, in_channels=in_channels, **kwargs)


def plugin_requirements(model_name: str, backbone_name: str | None) -> dict[str, str]:
    """{distribution: version} of the plugins a model needs (recorded in checkpoints/ONNX)."""
    reg = get_registry()
    spec = reg.model_spec(model_name)
    needed = {}
    sources = [spec] + ([] if spec.fused else [reg.backbone_spec(backbone_name or spec.default_backbone)])
    for src in sources:
        info = reg.plugins[src.plugin]
        if info.distribution:
            needed[info.distribution] = info.version or ""
    return needed


@dataclass(frozen=True)
class WeightsReport:
    """What `load_backbone_weights` did: tensors loaded, backbone keys left as initialised, file keys ignored."""

    path: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    def summary(self) -> str:
        text = f"backbone weights {self.path}: loaded {self.loaded} tensors"
        if self.missing:
            text += f"; {len(self.missing)} backbone keys missing from the file, left as initialised " \
                    f"(e.g. {', '.join(self.missing[:3])})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected keys ignored (e.g. {', '.join(self.unexpected[:3])})"
        return text


def load_backbone_weights(backbone: Any, path: str | os.PathLike) -> WeightsReport:
    """Load a local state dict into a backbone, with torch.load(weights_only=True).

    The file holds the backbone's state dict, or a whole model's (an instseg checkpoint or
    its `state_dict`), whose `backbone.*` entries are used - so a run's backbone can start
    another. Keys on one side only are reported; a tensor of another shape, or a file of
    which nothing fits, is an error (pretrained weights need the backbone's `width`).
    """
    import torch

    path = Path(path)
    own = backbone.state_dict()
    if not own:
        raise ConfigError(f"--weights {path}: this model's encoder is fused to its decoder; "
                          "there is no separate backbone to load weights into")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load - it holds objects that could run code") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: weights file is truncated or corrupted ({type(exc).__name__})") from exc
    state = _backbone_state(payload, path)
    matched = {k: v for k, v in state.items() if k in own}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in matched.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensors do not fit the backbone's shapes, e.g. {wrong[0]} "
                              "(file vs backbone; a different --width?)")
    if not matched:
        raise CheckpointError(f"{path}: none of its {len(state)} tensors fit the backbone (file keys e.g. "
                              f"{', '.join(list(state)[:3])}; backbone keys e.g. {', '.join(list(own)[:3])})")
    backbone.load_state_dict(matched, strict=False)
    return WeightsReport(str(path), len(matched), tuple(k for k in own if k not in matched),
                         tuple(k for k in state if k not in own))


def _backbone_state(payload: Any, path: Path) -> dict[str, Any]:
    """The backbone's entries of a state dict, a model's state dict or an instseg checkpoint."""
    import torch

    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    prefix = "backbone."
    if any(k.startswith(prefix) for k in payload):
        return {k[len(prefix):]: v for k, v in payload.items() if k.startswith(prefix)}
    return payload
