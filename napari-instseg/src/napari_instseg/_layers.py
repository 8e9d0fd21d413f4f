"""Between napari layers and instseg arrays: Qt-free, so the rules are testable on their own.

A napari Image layer may be a stack, a multiscale pyramid or a dask array; instseg segments
one 2-D picture (greyscale or RGB), so anything else is refused with a message naming the
layer. Labels layers get a per-instance `features` table: napari's `index` column holds the
label id (napari looks features up by it when the pointer hovers an instance) and `area_px`
the instance's size. There is no score column: `Predictor.segment` returns the label map only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from instseg.errors import ConfigError, DataError

AUTO = "auto"


def image_data(layer: Any) -> Any:
    """The data of an Image layer that instseg can segment (H x W or H x W x C; numpy, dask,
    zarr: read in the worker thread). Dtype and value range are left to instseg, which names
    what it accepts."""
    if layer.multiscale:
        raise DataError(f"image '{layer.name}' is multiscale: add one level (e.g. layer.data[0]) as an "
                        f"image of its own and segment that")
    if layer.ndim != 2:
        shape = " x ".join(str(n) for n in layer.data.shape)
        raise DataError(f"image '{layer.name}' has {layer.ndim} dimensions ({shape}): instseg segments one "
                        f"2-D picture (greyscale or RGB)")
    return layer.data


def instance_features(labels: np.ndarray) -> dict[str, np.ndarray]:
    """One row per instance of a label map: `index` (its label id, napari's key) and `area_px`."""
    counts = np.bincount(labels.ravel()) if labels.size else np.zeros(1, np.int64)
    ids = np.flatnonzero(counts)
    ids = ids[ids != 0]
    return {"index": ids, "area_px": counts[ids]}


def parse_object_size(text: str) -> float | str | None:
    """The widget's object-size field: empty (the run's own geometry), `auto`, or pixels > 0."""
    text = text.strip()
    if not text or text.lower() == AUTO:
        return text.lower() or None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"object size {text!r}: expected a number of pixels > 0, 'auto', or nothing "
                          f"(the run's own geometry)")
    return value


def labels_name(image_name: str) -> str:
    """The Labels layer made from an image (napari adds ' [1]' rather than replace one already there)."""
    return f"{image_name} labels"
