"""Large images at a fixed scale: tiles with overlap, instances stitched across tile borders."""

from pathlib import Path

import numpy as np
import pytest

from data_fixtures import nuclei_image
from instseg.instances.clustering import ClusterParams
from instseg.io.microscopy import FIXED
from instseg.metrics.scores import count_instances, symmetric_best_dice
from instseg.predict.pipeline import Prediction, Source, predict_sources
from instseg.predict.tiling import Stitcher, plan_tiles, tile_starts


class NucleiRunner:
    """Foreground = green channel; embedding = red channel x 4 (touching nuclei differ by 3 in it).
    Position-invariant, like a convolutional network away from its borders."""

    max_instances, multiple_of, static_size, image_size, reading = 400, 1, None, 64, FIXED
    cluster = ClusterParams(method="regions", full_resolution=False)

    def __init__(self, tile: int, overlap: int, scale: float = 1.0) -> None:
        self.scale, self.tile, self.tile_overlap = scale, tile, overlap
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images):
        self.shapes.append(images.shape)
        fg = images[:, 1] > 0.5
        semantic = np.stack([~fg, fg], 1).astype(np.float32)
        embedding = np.stack([images[:, 0] * 4.0, np.zeros_like(images[:, 0])], 1).astype(np.float32)
        count = fg.reshape(len(images), -1).mean(1, keepdims=True).astype(np.float32)
        return semantic, embedding, count


def run(runner: NucleiRunner, image: np.ndarray) -> Prediction:
    [result] = predict_sources([Source(Path("big.png"), "big", image)], runner)
    assert isinstance(result, Prediction)
    return result


def test_tile_starts_cover_the_length_with_the_overlap():
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))


def test_tile_cores_partition_the_image():
    tiles = plan_tiles(300, 500, 128, 32)
    owner = np.zeros((300, 500), int)
    for tile in tiles:
        y0, y1, x0, x1 = tile.core
        assert tile.y0 <= y0 < y1 <= tile.y1 and tile.x0 <= x0 < x1 <= tile.x1
        owner[y0:y1, x0:x1] += 1
    assert (owner == 1).all()


def test_a_large_image_is_predicted_tile_by_tile_and_stitched_exactly():
    image, truth = nuclei_image(420, 610)
    assert count_instances(truth) > 1000
    tiled = NucleiRunner(tile=128, overlap=32)
    result = run(tiled, image)
    assert max(shape[2] for shape in tiled.shapes) == 128 and max(shape[3] for shape in tiled.shapes) == 128
    assert len(tiled.shapes) == len(plan_tiles(420, 610, 128, 32)) > 12
    assert count_instances(result.labels) == count_instances(truth)
    assert symmetric_best_dice(result.labels, truth) == 1.0
    assert result.embedding is None and result.probability.shape == truth.shape  # stitched from the tiles' shares
    assert np.array_equal(result.probability > 0.5, truth > 0)
    whole = run(NucleiRunner(tile=4096, overlap=32), image)
    assert len(np.unique(whole.labels)) == len(np.unique(result.labels))


def test_tiles_follow_the_scale():
    image, truth = nuclei_image(300, 300, seed=1)
    runner = NucleiRunner(tile=96, overlap=48, scale=2.0)  # 48 px tiles of the original
    result = run(runner, image)
    assert all(shape[2] <= 96 and shape[3] <= 96 for shape in runner.shapes)
    assert count_instances(result.labels) == count_instances(truth)


@pytest.mark.parametrize("offset", [0, 3])
def test_an_object_cut_by_a_tile_border_is_one_instance(offset):
    """A 10 px object straddling the border of two tiles that overlap by 16 px."""
    stitcher = Stitcher(40, 80)
    left, right = plan_tiles(40, 80, 48, 16)
    truth = np.zeros((40, 80), np.int32)
    truth[10:20, 35 + offset:45 + offset] = 1
    for tile in (left, right):
        local = truth[tile.box].copy()
        stitcher.add(tile, local)
    assert np.array_equal(stitcher.labels > 0, truth > 0) and stitcher.labels.max() == 1
