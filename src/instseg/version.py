"""The installed version, in a module of its own so that any module can read it without
importing the package root (and, through it, the registry)."""

from importlib import metadata

try:
    __version__ = metadata.version("instseg")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
