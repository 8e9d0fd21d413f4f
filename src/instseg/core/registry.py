"""The model registry: pluggy hooks, entry-point discovery, isolation of broken plugins.

Every architecture - built-in or third-party - arrives the same way: a module named in the
`instseg` entry-point group implements `register_backbones(register)` and/or
`register_models(register)`. Discovery is lazy and happens once per process (spawned
DataLoader workers and DDP ranks discover on first use), built-ins first. A plugin is
all-or-nothing: if it fails to import, names an unknown hook, raises inside a hook or
registers a name another plugin already owns, nothing it registered is kept, it is
recorded as failed (with the reason) and everything else keeps working. Asking for a name
that a failed plugin provides (or might provide) raises PluginError naming its distribution.

Environment (read when discovery runs):
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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, NoReturn, Union

import pluggy

from instseg.errors import CheckpointError, ConfigError, InstsegError

if TYPE_CHECKING:
    from instseg.core.interfaces import Backbone, Decoder, SegmentationModel

PROJECT = "instseg"
BUILTIN_DISTRIBUTION = "instseg"
DISABLE_ENV = "INSTSEG_DISABLE_PLUGINS"
ONLY_ENV = "INSTSEG_PLUGINS"

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

        `factory(in_channels: int = 3, **kwargs) -> Backbone`; it must accept `width`.
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


Spec = Union[BackboneSpec, ModelSpec]


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"{what} name must be a non-empty string without surrounding spaces, got {name!r}")


@dataclass
class PluginInfo:
    """One loaded, failed or skipped plugin, for `instseg plugins` and error messages.

    registered: what it contributes ("backbone:NAME", "model:NAME").
    attempted: for a failed plugin, the names it tried to register before failing, so a
        request for one of them can say which distribution to fix.
    skipped: why discovery did not load it (INSTSEG_DISABLE_PLUGINS / INSTSEG_PLUGINS).
    """

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    attempted: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "skipped" if self.skipped else "loaded"

    @property
    def label(self) -> str:
        if self.distribution:
            dist = f"{self.distribution} {self.version or ''}".strip()
        else:
            dist = "in-process"
        return f"plugin '{self.name}' ({dist})"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "distribution": self.distribution,
                "version": self.version, "builtin": self.builtin, "status": self.status, "hooks": self.hooks,
                "registered": self.registered, "error": self.error, "skipped": self.skipped,
                "traceback": self.traceback}


@dataclass(frozen=True)
class PluginSelection:
    """Which third-party distributions discovery loads; the built-ins always load.

    disabled: load no third-party plugin. only: normalised names of the only distributions
    to load (None: all). `from_env()` reads INSTSEG_DISABLE_PLUGINS / INSTSEG_PLUGINS.
    """

    disabled: bool = False
    only: frozenset[str] | None = None

    @classmethod
    def from_env(cls) -> "PluginSelection":
        disabled = os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
        names = [n.strip() for n in os.environ.get(ONLY_ENV, "").split(",") if n.strip()]
        return cls(disabled, frozenset(normalise_distribution(n) for n in names) if names else None)

    @classmethod
    def only_distributions(cls, *names: str) -> "PluginSelection":
        return cls(False, frozenset(normalise_distribution(n) for n in names))

    def skip_reason(self, distribution: str) -> str | None:
        if self.disabled:
            return f"{DISABLE_ENV}=1"
        if self.only is not None and normalise_distribution(distribution) not in self.only:
            return f"not named in {ONLY_ENV}"
        return None


def normalise_distribution(name: str) -> str:
    """PEP 503 normalisation: 'Instseg_Plugin.Example' -> 'instseg-plugin-example'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else (None, None)


def _discover() -> list[metadata.EntryPoint]:
    """The group's entry points: built-ins first (by name), then by distribution and name.

    A distribution found twice on sys.path lists its entry points twice; the first wins,
    as it does for imports.
    """
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in metadata.entry_points(group=PROJECT):
        key = (normalise_distribution(_dist_of(ep)[0] or ""), ep.name)
        if key not in seen:
            seen.add(key)
            unique.append(ep)

    def order(ep: metadata.EntryPoint) -> tuple[bool, str, str]:
        dist = normalise_distribution(_dist_of(ep)[0] or "")
        return dist != BUILTIN_DISTRIBUTION, dist, ep.name

    return sorted(unique, key=order)


def _describe(obj: Any, given: str) -> str:
    if given:
        return given
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({frame[0].filename.rsplit(os.sep, 1)[-1]}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _keys(item: Spec) -> list[str]:
    """The registry keys an item claims: its kind-qualified name (and a model's aliases)."""
    if isinstance(item, BackboneSpec):
        return [f"backbone:{item.name}"]
    return [f"model:{n}" for n in (item.name, *item.aliases)]


class Registry:
    """Backbones and models contributed by plugins, discovered lazily once.

    `selection` fixes which third-party distributions load; None reads the environment
    when discovery runs.
    """

    def __init__(self, selection: PluginSelection | None = None) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(HookSpecs)
        self._backbones: dict[str, BackboneSpec] = {}
        self._models: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        self._plugins: dict[str, PluginInfo] = {}
        self._skipped: list[PluginInfo] = []
        self._selection = selection
        self._loaded = False
        self._lock = threading.RLock()

    # -- discovery -------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: a plugin that queries the registry at import does not recurse
            selection = self._selection or PluginSelection.from_env()
            found: set[str] = set()
            for ep in _discover():
                dist, version = _dist_of(ep)
                builtin = dist is not None and normalise_distribution(dist) == BUILTIN_DISTRIBUTION
                reason = None if builtin else selection.skip_reason(dist or "")
                if reason:
                    self._skipped.append(PluginInfo(ep.name, ep.value, dist, version, False, skipped=reason))
                    continue
                found.add(normalise_distribution(dist or ""))
                self._load_entry_point(ep, dist, version, builtin)
            for missing in sorted((selection.only or frozenset()) - found - set(self._plugins)):
                self._plugins[missing] = PluginInfo(
                    missing, "", missing, None, False,
                    error=f"named in {ONLY_ENV} but not installed (no distribution '{missing}' "
                          f"has '{PROJECT}' entry points)")

    def _load_entry_point(self, ep: metadata.EntryPoint, dist: str | None, version: str | None,
                          builtin: bool) -> None:
        # Entry-point names are chosen by each distribution independently; a second
        # distribution using a taken name is shown as "<distribution>:<name>".
        name = ep.name if ep.name not in self._plugins else f"{dist}:{ep.name}"
        info = PluginInfo(name, ep.value, dist, version, builtin)
        self._plugins[name] = info
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # isolate and report: a broken plugin must not break the CLI
            _fail(info, "import failed", exc)
            return
        self._register(plugin, info)

    def register_plugin(self, plugin: Any, name: str | None = None) -> PluginInfo:
        """Register a plugin object in-process (tests, notebooks). Failures raise PluginError."""
        with self._lock:
            self.ensure_loaded()
            name = name or getattr(plugin, "__name__", type(plugin).__name__)
            if name in self._plugins:
                raise PluginError(f"a plugin named '{name}' is already registered ({self._plugins[name].label})")
            info = PluginInfo(name, getattr(plugin, "__name__", repr(plugin)), None, None, False)
            self._plugins[name] = info
            self._register(plugin, info)
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

    def _register(self, plugin: Any, info: PluginInfo) -> None:
        """Call the plugin's hooks and commit what they registered - all of it or none."""
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # isolate and report: pluggy rejects bad hook signatures here
            _fail(info, "invalid plugin", exc)
            return
        staged: list[Spec] = []
        step: str | None = "invalid plugin"
        try:
            info.hooks = self._hooks_of(plugin)
            for hook_name in info.hooks:
                step = f"{hook_name} failed"
                self._call_hook(hook_name, info, staged)
            step = None  # a collision message names both plugins already
            self._check_free(staged)
        except Exception as exc:  # isolate and report: roll back, keep the rest of the registry intact
            self.pm.unregister(plugin)
            info.attempted = [key for item in staged for key in _keys(item)]
            _fail(info, step, exc)
            return
        for item in staged:
            if isinstance(item, BackboneSpec):
                self._backbones[item.name] = item
            else:
                self._models[item.name] = item
                self._aliases.update({alias: item.name for alias in item.aliases})
            info.registered.append(_keys(item)[0])

    def _hooks_of(self, plugin: Any) -> list[str]:
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = sorted(c.name for c in callers if not c.has_spec())
        if unknown:
            raise PluginError(f"unknown hook {', '.join(unknown)}; instseg hooks are {', '.join(HOOK_NAMES)}")
        hooks = [h for h in HOOK_NAMES if any(c.name == h for c in callers)]
        if not hooks:
            raise PluginError(
                f"implements no instseg hook (expected @instseg.hookimpl functions named {' or '.join(HOOK_NAMES)})")
        return hooks

    def _call_hook(self, hook_name: str, info: PluginInfo, staged: list[Spec]) -> None:
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
        self.pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)

    def _check_free(self, staged: list[Spec]) -> None:
        claimed: dict[str, str] = {}  # key -> plugin: what is registered plus what this plugin stages
        for spec in self._backbones.values():
            claimed[f"backbone:{spec.name}"] = spec.plugin
        for spec in self._models.values():
            claimed.update({key: spec.plugin for key in _keys(spec)})
        for item in staged:
            for key in _keys(item):
                if key in claimed:
                    kind, name = key.split(":", 1)
                    mine = self._plugins[item.plugin].label
                    if claimed[key] == item.plugin:
                        raise RegistryError(f"{kind} name '{name}' is registered twice by {mine}")
                    raise RegistryError(f"{kind} name '{name}' is registered twice: by "
                                        f"{self._plugins[claimed[key]].label} and by {mine}")
                claimed[key] = item.plugin

    # -- queries ---------------------------------------------------------------------
    @property
    def plugins(self) -> Mapping[str, PluginInfo]:
        """Loaded and failed plugins by name."""
        self.ensure_loaded()
        return MappingProxyType(self._plugins)

    def failed_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def skipped_plugins(self) -> list[PluginInfo]:
        """Installed plugins that INSTSEG_DISABLE_PLUGINS / INSTSEG_PLUGINS kept from loading."""
        self.ensure_loaded()
        return list(self._skipped)

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
            self._raise_unknown("model", name, [*self._models, *self._aliases])
        return self._models[key]

    def backbone_spec(self, name: str) -> BackboneSpec:
        self.ensure_loaded()
        if name not in self._backbones:
            self._raise_unknown("backbone", name, self._backbones)
        return self._backbones[name]

    def _raise_unknown(self, kind: str, name: str, known: Iterable[str]) -> NoReturn:
        """RegistryError for a plain unknown name; PluginError when a failed plugin may own it."""
        failed = self.failed_plugins()
        owner = next((p for p in failed if f"{kind}:{name}" in p.attempted), None)
        if owner is not None:
            raise PluginError(f"{kind} '{name}' comes from {owner.label}, which failed to load: {owner.error}")
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3)
        msg = f"unknown {kind} '{name}'"
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(known)}"
        if failed:
            raise PluginError(msg + "; it may belong to a plugin that failed to load: "
                              + "; ".join(f"{p.label}: {p.error}" for p in failed))
        skipped = sorted({f"{p.distribution} ({p.skipped})" for p in self._skipped})
        if skipped:
            msg += f" (installed plugins not loaded: {', '.join(skipped)})"
        raise RegistryError(msg)

    def install_hint(self, distribution: str, version: str | None) -> str:
        """What to do so that `distribution` (at `version`) provides its plugins here."""
        self.ensure_loaded()
        pinned = f"{distribution}=={version}" if version else distribution
        wanted = normalise_distribution(distribution)
        mine = [p for p in [*self._plugins.values(), *self._skipped]
                if p.distribution and normalise_distribution(p.distribution) == wanted]
        for p in mine:
            if p.skipped:
                return f"{distribution} {p.version} is installed but not loaded ({p.skipped})"
            if p.error:
                return f"{distribution} {p.version} is installed but failed to load: {p.error}"
        if mine and version and mine[0].version != version:
            return (f"{distribution} {mine[0].version} is installed, the checkpoint was made with {version}: "
                    f"pip install {pinned}")
        if mine:
            return f"{distribution} {mine[0].version} is installed and loaded"
        return f"pip install {pinned}"

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


def _fail(info: PluginInfo, step: str | None, exc: BaseException) -> None:
    """Record why a plugin failed: one line for tables and messages, the traceback for --json."""
    reason = str(exc) if isinstance(exc, InstsegError) else _short_error(exc)
    info.error = f"{step}: {reason}" if step else reason
    info.traceback = "".join(traceback.format_exception(exc))


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
        registry = _registry
    registry.ensure_loaded()
    return registry


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
