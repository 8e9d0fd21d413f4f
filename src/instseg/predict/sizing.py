"""Predicting at the objects' size: `--object-size PIXELS|auto` (`instances.size`).

    fixed D      every image is resized by run size / D (the runner's fixed `scale`), so
                 objects of D pixels meet the network at the size it learnt
    auto         each image is segmented, its objects measured, and segmented again at the
                 scale that brings them to the run's size, until the scale settles
    None         the run's own geometry (shorter side -> working size, or its fixed scale)

The runner's `scale` is set for the duration of a call and restored after. Torch-free.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np

from instseg.errors import ConfigError
from instseg.instances.clustering import ClusterParams
from instseg.instances.size import AUTO, estimate_object_size
from instseg.limits import SCALE
from instseg.predict.pipeline import Failure, Prediction, Runner, Source, predict_sources

ObjectSize = float | str | None


def run_size(runner: Runner) -> float:
    """The run's object size; an error naming the option when the model does not record one."""
    size = getattr(runner, "object_size", None)
    if size is None:
        raise ConfigError("--object-size: this model records no object size (trained before instseg measured it, "
                          "or on data without instances); retrain it, or leave --object-size out")
    return size


def clamp_scale(scale: float) -> float:
    return min(max(scale, SCALE[0]), SCALE[1])


@contextmanager
def scaled(runner: Runner, scale: float | None) -> Iterator[None]:
    """The runner at fixed `scale` (None: its own geometry) inside the block."""
    saved = runner.scale
    runner.scale = saved if scale is None else clamp_scale(scale)
    try:
        yield
    finally:
        runner.scale = saved


def describe(runner: Runner, object_size: ObjectSize) -> str:
    """What `object_size` does to this model's inputs, in words (printed by the CLI)."""
    if object_size is None:
        return ""
    size = run_size(runner)
    if object_size == AUTO:
        return f"object size: estimated per image, resized so that objects measure {size:.1f} px (the run's)"
    return f"object size {object_size:g} px: images resized x{clamp_scale(size / object_size):.3g} to the run's {size:.1f} px"


def _one(source: Source, runner: Runner, params: ClusterParams) -> Prediction | Failure:
    return next(predict_sources([source], runner, params, batch_size=1))


def predict_auto(source: Source, runner: Runner, params: ClusterParams) -> Prediction | Failure:
    """One image at the scale its own objects call for (`instances.size.estimate_object_size`)."""
    tried: dict[float | None, Prediction | Failure] = {}

    def segment(scale: float | None) -> np.ndarray:
        with scaled(runner, scale):
            result = tried[scale] = _one(source, runner, params)
        if isinstance(result, Failure):
            raise _Stop(result)
        return result.labels

    try:
        _, scale = estimate_object_size(segment, run_size(runner))
    except _Stop as stop:
        return stop.failure
    if scale != scale:  # NaN: nothing found at the run's geometry: keep that prediction
        return tried[None]
    if scale not in tried:
        segment(scale)
    return tried[scale]


class _Stop(Exception):
    """A failed image ends its estimate: the Failure is its result."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure


def predict_sized(sources: Iterable[Source | Failure], runner: Runner, params: ClusterParams | None = None,
                  batch_size: int = 4, object_size: ObjectSize = None) -> Iterator[Prediction | Failure]:
    """`pipeline.predict_sources`, with the images resized to `object_size` (see the module docstring)."""
    params = params or runner.cluster
    if object_size is None:
        yield from predict_sources(sources, runner, params, batch_size)
        return
    if object_size != AUTO:
        with scaled(runner, run_size(runner) / float(object_size)):
            yield from predict_sources(sources, runner, params, batch_size)
        return
    run_size(runner)  # fail before the first image when there is nothing to match
    for source in sources:
        yield source if isinstance(source, Failure) else predict_auto(source, runner, params)
