"""Object size: how big a model's objects are, so that images of another scale can be resized to it.

A run records the typical size of its training objects at the working scale (`run_object_size`,
in the checkpoint's model record and the ONNX metadata). At prediction, `--object-size D`
(pixels in the input images) resizes every image by run size / D, as cellpose's `--diameter`
does, so that objects photographed closer or further meet the network at the size it learnt;
`auto` estimates D from the image itself (`estimate_object_size`). Torch-free.

The size of an object is the side of a square of its area, and an image's is
sqrt(foreground pixels / instances): the mean object's, weighted by area.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

AUTO = "auto"
ROUNDS = 3  # auto: re-estimate at the new scale this many times at most
SETTLED = 0.1  # auto: stop when the factor changes by less than this (relative)


def object_size(labels: np.ndarray) -> float | None:
    """sqrt(foreground pixels / instances) of a label map, in its pixels; None without instances."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return None
    return math.sqrt(float((labels > 0).sum()) / ids.size)


def run_object_size(sizes: Iterable[float | None]) -> float | None:
    """The median object size over a run's training images (each at its working scale)."""
    values = [s for s in sizes if s is not None]
    return float(np.median(values)) if values else None


def parse_object_size(text: str | float | None) -> float | str | None:
    """`--object-size`: a positive number of pixels, `auto`, or None (the run's working size)."""
    if text is None or text == AUTO:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        from instseg.errors import ConfigError

        raise ConfigError(f"--object-size {text!r}: expected a number of pixels > 0, or 'auto'")
    return value


def estimate_object_size(segment: Callable[[float | None], np.ndarray], run_size: float) -> tuple[float | None, float]:
    """`auto`: the object size of one image, found by segmenting it and looking.

    `segment(scale)` returns the label map (input pixels) with the image resized by `scale`
    (None: the run's default working size). The objects found give a size D, hence the scale
    run_size / D; the image is segmented again at that scale until the scale settles (at most
    ROUNDS times), since objects seen at the wrong size are found split or merged. Returns
    (D in input pixels, or None when nothing was found; the scale to use).
    """
    size = object_size(segment(None))
    if size is None:
        return None, math.nan
    scale = run_size / size
    for _ in range(ROUNDS - 1):
        found = object_size(segment(scale))
        if found is None:
            break
        new_scale = run_size / found
        settled = abs(new_scale / scale - 1) < SETTLED
        size, scale = found, new_scale
        if settled:
            break
    return size, scale
