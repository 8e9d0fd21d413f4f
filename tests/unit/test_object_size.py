"""Object size: measured on label maps, recorded by training, matched at prediction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from instseg.errors import ConfigError
from instseg.instances.size import estimate_object_size, object_size, parse_object_size, run_object_size
from instseg.predict.pipeline import Source
from instseg.predict.sizing import predict_sized, scaled
from predict_support import CodeRunner, leaf_image


def test_object_size_by_hand():
    labels = np.zeros((10, 10), np.int64)
    labels[:2, :2] = 1  # 4 px
    labels[5:, 5:] = 2  # 25 px
    assert object_size(labels) == pytest.approx(math.sqrt(29 / 2))
    assert object_size(np.zeros((4, 4), np.int64)) is None
    assert run_object_size([3.0, None, 5.0, 100.0]) == 5.0 and run_object_size([None]) is None


def test_parse_object_size():
    assert parse_object_size("12.5") == 12.5 and parse_object_size("auto") == "auto" and parse_object_size(None) is None
    for bad in ("0", "-3", "nan", "big"):
        with pytest.raises(ConfigError, match="--object-size"):
            parse_object_size(bad)


def test_auto_settles_on_the_scale_where_objects_have_the_run_size():
    """A segmenter that finds objects of 40 input px at any scale: the estimate is the scale
    that makes them the run's 10 px, and a second look at that scale confirms it."""
    seen = []

    def segment(scale):
        seen.append(scale)
        labels = np.zeros((80, 80), np.int64)
        labels[:40, :40], labels[40:, 40:] = 1, 2  # objects of 40 input px, whatever the scale
        return labels

    size, scale = estimate_object_size(segment, run_size=10.0)
    assert size == 40.0 and scale == pytest.approx(0.25)
    assert seen == [None, 0.25]  # settled at the second look


class SizedRunner(CodeRunner):
    object_size = 8.0
    tile, tile_overlap = 256, 64  # fixed-scale runs tile images above this: none here


def test_a_fixed_object_size_resizes_every_image_and_restores_the_runner():
    runner = SizedRunner(image_size=32)
    image, labels = leaf_image(64, 64)
    [prediction] = predict_sized([Source(Path("a"), "a", image)], runner, object_size=32.0)
    assert runner.shapes[-1][2:] == (16, 16)  # 64 px x 8 / 32 (the working size alone would give 32)
    assert runner.scale is None
    assert prediction.labels.shape == labels.shape


def test_auto_measures_the_image_and_keeps_its_prediction():
    runner = SizedRunner(image_size=32)
    image, labels = leaf_image(64, 64)
    [prediction] = predict_sized([Source(Path("a"), "a", image)], runner, object_size="auto")
    found = object_size(labels)
    assert runner.shapes[-1][2] == round(64 * 8.0 / found)  # the last look was at the settled scale
    assert runner.scale is None and prediction.labels.max() == labels.max()


def test_a_model_without_a_recorded_size_says_so():
    with pytest.raises(ConfigError, match="records no object size"):
        list(predict_sized([], CodeRunner(), object_size=10.0))


def test_scaled_restores_the_scale_after_an_error():
    runner = SizedRunner(scale=1.0)
    with pytest.raises(RuntimeError), scaled(runner, 2.0):
        assert runner.scale == 2.0
        raise RuntimeError
    assert runner.scale == 1.0
