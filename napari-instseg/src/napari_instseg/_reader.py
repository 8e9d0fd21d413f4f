"""Open instseg's label outputs (`<name>_label.png`, `.tif`, `.tiff`) as Labels layers.

Any other path gets None, so napari asks its other readers. A damaged or non-label file
named like an output is reported in one line (instseg's own message) and adds no layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from napari.utils.notifications import show_error

from instseg.errors import InstsegError
from instseg.io.images import read_label_map
from napari_instseg._layers import instance_features

LABEL_SUFFIXES = ("_label.png", "_label.tif", "_label.tiff")
NOTHING = [(None,)]  # napari's "read, but no layer" answer

LayerData = tuple[Any, ...]


def is_label_output(path: str | Path) -> bool:
    """Named like a label map that `instseg predict` / `infer` wrote."""
    return Path(path).name.lower().endswith(LABEL_SUFFIXES)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: `read_label_outputs` for instseg label outputs, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return read_label_outputs if paths and all(is_label_output(p) for p in paths) else None


def read_label_outputs(path: str | list[str]) -> list[LayerData]:
    """One Labels layer per file, named after it, with its instances' features."""
    layers = []
    for each in [path] if isinstance(path, (str, Path)) else path:
        try:
            labels = read_label_map(each)
        except InstsegError as exc:
            show_error(str(exc))
            continue
        layers.append((labels, {"name": Path(each).stem, "features": instance_features(labels)}, "labels"))
    return layers or NOTHING
