"""The model registry: which backbones and models exist, discovered once and looked up by name.

Building them is `models.factory`'s job; the registry only discovers and answers.

Every architecture - built-in or third-party - arrives the same way: a module named in the
`instseg` entry-point group implements `register_backbones(register)` and/or
`register_models(register)` (`hookspecs`). Discovery (`models.discovery`) is lazy and happens
once per process (spawned DataLoader workers and DDP ranks discover on first use), built-ins
first. A plugin is all-or-nothing: if it fails to import, names an unknown hook, raises
inside a hook or registers a name another plugin already owns, nothing it registered is
kept, it is recorded as failed (with the reason) and everything else keeps working. Asking
for a name that a failed plugin provides (or might provide) raises PluginError naming its
distribution.

Environment (read when discovery runs):
  INSTSEG_DISABLE_PLUGINS=1   load the built-in plugins only
  INSTSEG_PLUGINS=a,b         load built-ins plus only these third-party distributions
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from dataclasses import replace
from importlib import metadata
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, NoReturn

import pluggy

from instseg.errors import PluginError, RegistryError
from instseg.models.discovery import (  # `_discover` is looked up here: tests patch `registry._discover`
    PluginInfo,
    PluginSelection,
    _describe,
    _discover,
    _dist_of,
    _fail,
    install_hint,
    is_builtin,
    normalize_distribution,
    not_installed,
)
from instseg.models.hookspecs import HOOK_NAMES, PROJECT, HookSpecs
from instseg.models.specs import BackboneSpec, ModelSpec, ObjectiveSpec, Spec


def _keys(item: Spec) -> list[str]:
    """The registry keys an item claims: its kind-qualified name (and a model's aliases)."""
    if isinstance(item, BackboneSpec):
        return [f"backbone:{item.name}"]
    if isinstance(item, ObjectiveSpec):
        return [f"objective:{item.name}"]
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
        self._objectives: dict[str, ObjectiveSpec] = {}
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
                builtin = is_builtin(dist)
                reason = None if builtin else selection.skip_reason(dist or "")
                if reason:
                    self._skipped.append(PluginInfo(ep.name, ep.value, dist, version, False, skipped=reason))
                    continue
                found.add(normalize_distribution(dist or ""))
                self._load_entry_point(ep, dist, version, builtin)
            for missing in sorted((selection.only or frozenset()) - found - set(self._plugins)):
                self._plugins[missing] = not_installed(missing)

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
            self._objectives = {k: v for k, v in self._objectives.items() if v.plugin != name}
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
            elif isinstance(item, ObjectiveSpec):
                self._objectives[item.name] = item
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
        elif hook_name == "register_objectives":
            def register(spec: ObjectiveSpec) -> None:  # type: ignore[misc]
                if not isinstance(spec, ObjectiveSpec):
                    raise TypeError(f"register_objectives expects ObjectiveSpec, got {type(spec).__name__}")
                staged.append(replace(spec, plugin=info.name, distribution=info.distribution,
                                      description=_describe(spec.loss, spec.description)))
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
        for objective in self._objectives.values():
            claimed[f"objective:{objective.name}"] = objective.plugin
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

    def list_objectives(self, pattern: str | None = None) -> list[str]:
        self.ensure_loaded()
        return _filter(self._objectives, pattern)

    def objective_spec(self, name: str) -> ObjectiveSpec:
        self.ensure_loaded()
        if name not in self._objectives:
            self._raise_unknown("objective", name, self._objectives)
        return self._objectives[name]

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
        return install_hint(distribution, version, [*self._plugins.values(), *self._skipped])


def _filter(names: Iterable[str], pattern: str | None) -> list[str]:
    names = sorted(names)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


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


def plugin_requirements(model_name: str, backbone_name: str | None) -> dict[str, str]:
    """{distribution: version} of the plugins a model needs (recorded in checkpoints/ONNX)."""
    reg = get_registry()
    spec = reg.model_spec(model_name)
    needed = {}
    chosen = spec.backbone_for(backbone_name)
    sources = [spec] + ([] if chosen is None else [reg.backbone_spec(chosen)])
    for src in sources:
        info = reg.plugins[src.plugin]
        if info.distribution:
            needed[info.distribution] = info.version or ""
    return needed

