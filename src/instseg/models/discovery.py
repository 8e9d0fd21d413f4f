"""Finding plugins and recording what became of each: entry points, selection, failures.

The registry decides what a plugin may register; this module only answers which entry
points to load (built-ins first, INSTSEG_DISABLE_PLUGINS / INSTSEG_PLUGINS honoured) and
keeps, per plugin, what it registered or why it failed - for `instseg plugins` and for
error messages that name the distribution to fix. (Not to be confused with
`instseg.models.architectures`, the built-in architectures.)
"""

from __future__ import annotations

import inspect
import os
import re
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

from instseg.errors import InstsegError
from instseg.models.hookspecs import PROJECT

BUILTIN_DISTRIBUTION = "instseg"
DISABLE_ENV = "INSTSEG_DISABLE_PLUGINS"
ONLY_ENV = "INSTSEG_PLUGINS"


def normalize_distribution(name: str) -> str:
    """PEP 503 normalization: 'Instseg_Plugin.Example' -> 'instseg-plugin-example'."""
    return re.sub(r"[-_.]+", "-", name).lower()




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

    disabled: load no third-party plugin. only: normalized names of the only distributions
    to load (None: all). `from_env()` reads INSTSEG_DISABLE_PLUGINS / INSTSEG_PLUGINS.
    """

    disabled: bool = False
    only: frozenset[str] | None = None

    @classmethod
    def from_env(cls) -> "PluginSelection":
        disabled = os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
        names = [n.strip() for n in os.environ.get(ONLY_ENV, "").split(",") if n.strip()]
        return cls(disabled, frozenset(normalize_distribution(n) for n in names) if names else None)

    @classmethod
    def only_distributions(cls, *names: str) -> "PluginSelection":
        return cls(False, frozenset(normalize_distribution(n) for n in names))

    def skip_reason(self, distribution: str) -> str | None:
        if self.disabled:
            return f"{DISABLE_ENV}=1"
        if self.only is not None and normalize_distribution(distribution) not in self.only:
            return f"not named in {ONLY_ENV}"
        return None


def not_installed(distribution: str) -> PluginInfo:
    """A failed entry for a distribution INSTSEG_PLUGINS names but nothing installed provides."""
    return PluginInfo(distribution, "", distribution, None, False,
                      error=f"named in {ONLY_ENV} but not installed (no distribution '{distribution}' "
                            f"has '{PROJECT}' entry points)")


def of_distribution(plugins: Iterable[PluginInfo], distribution: str) -> list[PluginInfo]:
    """The plugins that `distribution` provides (names compared normalized)."""
    wanted = normalize_distribution(distribution)
    return [p for p in plugins if p.distribution and normalize_distribution(p.distribution) == wanted]


def install_hint(distribution: str, version: str | None, plugins: Iterable[PluginInfo]) -> str:
    """What to do so that `distribution` (at `version`) provides its plugins, given what
    discovery made of the installed `plugins` (loaded, failed and skipped)."""
    pinned = f"{distribution}=={version}" if version else distribution
    mine = of_distribution(plugins, distribution)
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


def _dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else (None, None)


def is_builtin(distribution: str | None) -> bool:
    """Whether a distribution is instseg itself (whose plugins always load)."""
    return distribution is not None and normalize_distribution(distribution) == BUILTIN_DISTRIBUTION


def _discover() -> list[metadata.EntryPoint]:
    """The group's entry points: built-ins first (by name), then by distribution and name.

    A distribution found twice on sys.path lists its entry points twice; the first wins,
    as it does for imports.
    """
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in metadata.entry_points(group=PROJECT):
        key = (normalize_distribution(_dist_of(ep)[0] or ""), ep.name)
        if key not in seen:
            seen.add(key)
            unique.append(ep)

    def order(ep: metadata.EntryPoint) -> tuple[bool, str, str]:
        dist = normalize_distribution(_dist_of(ep)[0] or "")
        return dist != BUILTIN_DISTRIBUTION, dist, ep.name

    return sorted(unique, key=order)


def _describe(obj: Any, given: str) -> str:
    """A registered item's description: the one given, else the first line of its docstring."""
    if given:
        return given
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({frame[0].filename.rsplit(os.sep, 1)[-1]}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _fail(info: PluginInfo, step: str | None, exc: BaseException) -> None:
    """Record why a plugin failed: one line for tables and messages, the traceback for --json."""
    reason = str(exc) if isinstance(exc, InstsegError) else _short_error(exc)
    info.error = f"{step}: {reason}" if step else reason
    info.traceback = "".join(traceback.format_exception(exc))
