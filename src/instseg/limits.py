"""The ranges a model's values must lie in, written once.

Training options (`train.config`), checkpoint records (`checkpoint`) and ONNX metadata
(`runtime.metadata`) are all checked against these, so a value one of them accepts is never
refused by another. Torch-free.
"""

from __future__ import annotations

import math
import os
from typing import Any

# The working size (square) a network is trained and run at: up to 4 Mpx per input, 8x the
# presets' 256 px (at 4096 px one 64 px photo, upscaled, took 4.4 GB through a 1x1-conv graph).
IMAGE_SIZE = (16, 2048)
# Full-resolution clustering holds D floats per pixel of up to 2 Mpx: 1 GiB at D = 128, 4x the
# default 32 (at D = 4096 the embeddings of one 500 px photo alone took 4 GB).
EMBEDDING_DIM = (1, 128)
MAX_INSTANCES = (1, 2**16 - 1)  # label maps are 16-bit
# A network's base channel count: 2x the original networks' 64 (parameters grow with its square;
# MODEL_BYTES bounds what an architecture's other options make of it).
WIDTH = (1, 128)
# What the counter head pools over: the whole image (the original), or the foreground the semantic
# head sees, so that a plant's count does not move with the background around it (models.interfaces).
COUNTER_POOLING = ("image", "foreground")
MULTIPLE_OF = (1, 1024)  # the padding multiple a network needs
SCALE = (1 / 64, 64)  # a run's fixed resize factor (microscopy)
EPOCH = (0, 10**9)
ZOOM = (1 / 16, 16)  # the training augmentation's random zoom, around the working scale
OBJECT_SIZE = (0.5, 10**5)  # pixels: a typical object's side (instances.size)
SEED = (0, 2**32 - 1)  # numpy's seed range
# A model's parameters and buffers: 1 GiB (268M float32 parameters, 8x a width-64 UNet), checked on
# torch's meta device before anything is allocated; an export of it stays under protobuf's 2 GiB.
MODEL_BYTES = 2**30
MIN_TILE = 16  # original pixels a fixed-scale run's working size covers at least (`scale_range`)
# Clustering options a file may set (`instances.clustering.ClusterParams`), a few times their defaults:
# kmeans screens restarts x k x sample/4 distances, k up to sample/4: 16 x 4096^2 floats, 1 GiB, at most.
CLUSTER_SAMPLE_SIZE = (1, 2**14)
CLUSTER_RESTARTS = (1, 16)
CLUSTER_ITERATIONS = (1, 100)
CLUSTER_MAX_CLUSTERS = (1, 1024)
CLUSTER_MIN_SIZE = (0, 2**31 - 1)  # pixels


def is_int(value: Any) -> bool:
    """An int, not a bool (JSON and config values: True is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON reads `1e400` as inf, and Python's reader takes NaN)."""
    return is_int(value) or isinstance(value, float) and math.isfinite(value)


def is_int_in(value: Any, bounds: tuple[int, int]) -> bool:
    """An int (not a bool) within `bounds`, inclusive."""
    return is_int(value) and bounds[0] <= value <= bounds[1]


def is_number_in(value: Any, bounds: tuple[float, float]) -> bool:
    """A finite int or float (not a bool) within `bounds`, inclusive."""
    return is_number(value) and bounds[0] <= value <= bounds[1]


def describe(bounds: tuple[float, float]) -> str:
    """`low..high` as users read it (1/64 rather than 0.015625)."""
    low, high = bounds
    text = lambda v: f"1/{round(1 / v)}" if 0 < v < 1 else f"{int(v)}" if float(v).is_integer() else f"{v:g}"  # noqa: E731
    return f"{text(low)}..{text(high)}"


def scale_range(image_size: Any) -> tuple[float, float]:
    """The fixed resize factors a run of this working size may have: within SCALE, and small enough
    that a tile (one working size) covers MIN_TILE pixels of the image; past that, tiles of a pixel.
    An invalid working size (refused on its own) leaves SCALE."""
    if not is_int_in(image_size, IMAGE_SIZE):
        return SCALE
    return SCALE[0], min(SCALE[1], image_size / MIN_TILE)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and `taskset` set;
    the machine's count where the platform has no mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity masks
        return max(1, os.cpu_count() or 1)


def at_most_cpus(asked: int) -> int:
    """A thread or process count no larger than the available CPUs: more only queue for the same
    cores, and thousands of them take minutes to start (ONNX Runtime's intra-op pool, DataLoader
    workers)."""
    return min(asked, usable_cpus())


# The instances one training image may hold: the discriminative loss compares every pair of a tile's
# instances (B x K x K), so past ~1000 a step's time and memory grow with the square of the count.
# Forward and backward, 8 tiles of 256 px each holding K instances, D = 32, 2 CPU cores: 0.54 s / 0.6 GB
# at K = 20, 0.70 s / 1.0 GB at 1000, 2.1 s / 1.5 GB at 2000, 15 s / 4.4 GB at 4000 (2305 stalled the
# loss of B x K x K x D differences before: 12.6 s / 4.7 GB at 1000 there).
TRAINING_INSTANCES = 1000

# A TIFF with more pixels than this is a slide, predicted tile by tile from disk (`predict.slides`):
# decoded whole it would take 12 bytes a pixel as float RGB, 805 MB at 8192 x 8192, before its outputs.
SLIDE_PIXELS = 2**26
