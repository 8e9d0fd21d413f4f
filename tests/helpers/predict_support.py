"""Shared by test_predict.py (cli lane) and test_pipelined.py (unit lane): pictures that encode
their own instances, and a numpy runner that reads them back (no network)."""

from __future__ import annotations

import numpy as np

from instseg.instances.clustering import ClusterParams
from instseg.io.writing import write_rgb
from instseg.io.microscopy import FIXED


def leaf_image(h, w, seed=0, n=4):
    """An image that encodes its instances (red = id / 10, green = foreground) and its labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int64)
    for i in range(1, n + 1):
        y, x = rng.integers(0, h - h // 3), rng.integers(0, w - w // 3)
        labels[y:y + h // 3, x:x + w // 3] = i
    image = np.zeros((h, w, 3), np.float32)
    image[..., 0] = labels / 10
    image[..., 1] = labels > 0
    return image, labels


class CodeRunner:
    """A runner that reads the instances back out of `leaf_image` pictures (no network)."""

    def __init__(self, image_size=32, multiple_of=1, static_size=None, nan=False, scale=None):
        self.max_instances = 20
        self.image_size = image_size
        self.scale = scale
        # its embeddings encode ids linearly, so bilinear up-sampling would blend ids: cluster at the working size
        self.cluster = ClusterParams(method="kmeans", full_resolution=False)
        self.multiple_of = multiple_of
        self.static_size = static_size
        self.reading = FIXED
        self.nan = nan
        self.shapes = []

    def __call__(self, images):
        assert images.dtype == np.float32 and images.ndim == 4 and images.shape[1] == 3
        assert images.shape[2] % self.multiple_of == 0 and images.shape[3] % self.multiple_of == 0
        self.shapes.append(images.shape)
        ids = np.round(images[:, 0] * 10)
        fg = images[:, 1] > 0.5
        semantic = np.stack([~fg, fg], 1).astype(np.float32)
        embedding = np.stack([ids * 3.0, -ids * 2.0], 1).astype(np.float32)
        if self.nan:
            embedding[0, 0, 0, 0] = np.nan
        count = np.array([[len(np.unique(i[f])) / self.max_instances] for i, f in zip(ids, fg)], np.float32)
        return semantic, embedding, count


def write_images(folder, sizes, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, (h, w) in enumerate(sizes):
        image, labels = leaf_image(h, w, seed + i)
        write_rgb(folder / f"plant{i:03d}_rgb.png", np.round(image * 255).astype(np.uint8))
        truth[f"plant{i:03d}"] = labels
    return truth
