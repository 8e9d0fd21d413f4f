"""The ranges a model's values must lie in, written once.

Training options (`train.config`), checkpoint records (`checkpoint`) and ONNX metadata
(`runtime.metadata`) are all checked against these, so a value one of them accepts is never
refused by another. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any

IMAGE_SIZE = (16, 4096)  # the working size (square) a network is trained and run at
EMBEDDING_DIM = (1, 4096)
MAX_INSTANCES = (1, 2**16 - 1)  # label maps are 16-bit
WIDTH = (1, 1024)  # a network's base channel count
MULTIPLE_OF = (1, 1024)  # the padding multiple a network needs
SCALE = (1 / 64, 64)  # a run's fixed resize factor (microscopy)
EPOCH = (0, 10**9)
ZOOM = (1 / 16, 16)  # the training augmentation's random zoom, around the working scale
OBJECT_SIZE = (0.5, 10**5)  # pixels: a typical object's side (instances.size)


def is_int_in(value: Any, bounds: tuple[int, int]) -> bool:
    """An int (not a bool) within `bounds`, inclusive."""
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def is_number_in(value: Any, bounds: tuple[float, float]) -> bool:
    """A finite int or float (not a bool) within `bounds`, inclusive."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and bounds[0] <= value <= bounds[1])


def describe(bounds: tuple[float, float]) -> str:
    """`low..high` as users read it (1/64 rather than 0.015625)."""
    low, high = bounds
    text = lambda v: f"1/{round(1 / v)}" if 0 < v < 1 else f"{v:g}"  # noqa: E731
    return f"{text(low)}..{text(high)}"
