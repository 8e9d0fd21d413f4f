"""Dataset construction from a `--data` spec, and per-dataset normalisation statistics.

`build_datasets` is the one entry point: synthetic leaves, or a CVPPP / folder / COCO dataset
split into training and validation by `--val-list` or a seeded `--val-split`. Training items are
transformed (`transforms.TrainTransform`) to `image_size` squares; validation items stay at
their original resolution, so scores are computed there (see `predict/evaluation.py`). Both
sets of a file dataset share one `checks.TrainingCheck`: `verify` refuses what `instseg data
check` calls not usable, with its reason.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from instseg.data.checks import TrainingCheck
from instseg.data.coco import split_coco
from instseg.data.layouts import DataSpec, discover, parse_data_spec
from instseg.data.samples import Sample, read_sample, scan_sizes, split_samples
from instseg.data.synthetic import render_plant
from instseg.data.transforms import TrainTransform, training_augment
from instseg.errors import ConfigError
from instseg.io.microscopy import FIXED, Reading

__all__ = ["DataSpec", "LabelledImages", "SyntheticLeaves", "build_datasets", "estimate_mean_std", "parse_data_spec"]



class ItemDataset(Dataset):
    """Items {"image": 3xHxW float32 in [0, 1], "labels": HxW int64, "name": str}.

    `read(i)` gives the stored item (labels contiguous 1..N, so the count is the largest id);
    `__getitem__` applies the training transform, if any.
    """

    transform: Callable[[dict], dict] | None = None

    def read(self, index: int) -> dict:
        raise NotImplementedError

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every item as `read` returns it, known without decoding (file headers)."""
        raise NotImplementedError

    def verify(self) -> int:
        """Decode every item once, so a damaged file stops training before its first step
        rather than an epoch in; returns the largest instance count of an image (what the
        counter head must reach). Rendered data has nothing to check: 0."""
        return 0

    def __getitem__(self, index: int) -> dict:
        item = self.read(index)
        return self.transform(item) if self.transform is not None else item


class SyntheticLeaves(ItemDataset):
    """Generated rosettes (see `synthetic.py`): nothing to download, deterministic per index.

    Rendered images are kept in memory (up to `CACHE_BYTES` per process), so epochs after
    the first do not render again: on a CPU, rendering would otherwise cost ~15% of a step.
    """

    CACHE_BYTES = 256 * 2**20

    def __init__(self, length: int, image_size: int = 128, seed: int = 0, split: str = "train") -> None:
        if length < 1:
            raise ConfigError(f"synthetic dataset length must be >= 1, got {length}")
        self.length = length
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:
        return self.length

    def sizes(self) -> list[tuple[int, int]]:
        return [(self.image_size, self.image_size)] * self.length

    def read(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, labels = self._render(index)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "name": f"synthetic-{self.split}-{index:05d}",
        }


    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        image, labels = render_plant(self.seed, index, self.image_size, self.split)
        labels = labels.astype(np.uint16)  # compact: ids are small
        if self._cache_bytes + image.nbytes + labels.nbytes <= self.CACHE_BYTES:
            self._cache[index] = (image, labels)
            self._cache_bytes += image.nbytes + labels.nbytes
        return image, labels


class LabelledImages(ItemDataset):
    """Image / label-map pairs from disk; sizes and label modes are checked from headers up front,
    the rest by `verify` (`check`: `data check`'s checks, shared with the other set of the run;
    by default over these samples only)."""

    def __init__(self, samples: list[Sample], transform: Callable[[dict], dict] | None = None,
                 check: TrainingCheck | None = None, reading: Reading = FIXED) -> None:
        self.samples = samples
        self.transform = transform
        self.reading = reading
        self._sizes = scan_sizes(samples)
        self.check = check or TrainingCheck.of(samples, reading)

    def __len__(self) -> int:
        return len(self.samples)

    def sizes(self) -> list[tuple[int, int]]:
        return list(self._sizes)

    def verify(self) -> int:
        counts = self.check.counts()
        return max((counts[sample.image] for sample in self.samples), default=0)

    def read(self, index: int) -> dict:
        sample = self.samples[index]
        image, labels = read_sample(sample, self.reading)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "labels": torch.from_numpy(labels),
            "name": sample.name,
        }


def build_datasets(
    spec: str,
    *,
    image_size: int,
    seed: int,
    train_size: int,
    val_size: int,
    val_split: float = 0.2,
    val_list: str | os.PathLike | None = None,
    augment: bool = True,
    scale: float | None = None,
    zoom: tuple[float, float] | None = None,
    photometric: str = "colour",
    reading: Reading = FIXED,
) -> tuple[ItemDataset, ItemDataset]:
    """Train and validation datasets for a `--data` spec.

    Synthetic data is rendered at `image_size` (`train_size` / `val_size` images) and not
    augmented: every image is new geometry already. File datasets use every labelled image,
    split by `val_list` (stems) or a seeded `val_split` fraction; `train_size` / `val_size`
    do not apply to them. `scale`: training crops at that fixed resize factor (see
    `TrainTransform`) instead of shorter side -> `image_size`. `zoom`: the augmentation's random
    zoom range (None: `Augment`'s). `photometric`: the intensity augmentation, "colour" (jitter and
    blur) or "microscopy" (also grey, inversion, stain, gamma, dimming, noise: `data.photometric`).
    `reading`: which channels of the files are used and how their intensities are scaled
    (`io.microscopy`; synthetic data is rendered in [0, 1] already).
    """
    aug = training_augment(photometric, zoom, percentile=reading.normalize == "percentile")
    data = parse_data_spec(spec)
    if data.kind == "synthetic":
        if val_list is not None:
            raise ConfigError("--val-list selects images of a dataset folder; synthetic data uses --val-size")
        return (
            SyntheticLeaves(train_size, image_size, seed, "train"),
            SyntheticLeaves(val_size, image_size, seed, "val"),
        )
    layout = discover(data)
    if data.kind == "coco":
        train, val = split_coco(layout, data.images, val_split=val_split, val_list=val_list, seed=seed)
    else:
        train, val = split_samples(layout.require_labels(), val_split=val_split, val_list=val_list, seed=seed)
    transform = TrainTransform(image_size, aug if augment else None, scale)
    check = TrainingCheck(train + val, layout.root, str(data), reading)
    return LabelledImages(train, transform, check, reading), LabelledImages(val, None, check, reading)


def estimate_object_size(dataset: ItemDataset, image_size: int, scale: float | None = None,
                         max_images: int = 64) -> float | None:
    """The typical object size (`instances.size`) of (up to) `max_images` evenly spaced
    images, each measured at its working scale: what the network sees, un-augmented."""
    from instseg.instances.size import object_size, run_object_size

    indices = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max_images)).round().astype(int))
    sizes = []
    for i in indices:
        labels = dataset.read(int(i))["labels"].numpy()
        size = object_size(labels)
        factor = scale if scale is not None else image_size / min(labels.shape)
        sizes.append(None if size is None else size * factor)
    return run_object_size(sizes)


def estimate_mean_std(dataset: ItemDataset, max_images: int = 32) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to) `max_images` evenly spaced, un-augmented images."""
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max_images)).round().astype(int))
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for i in indices:
        image = dataset.read(int(i))["image"].double()
        total += image.sum(dim=(1, 2))
        total_sq += image.pow(2).sum(dim=(1, 2))
        pixels += image.shape[1] * image.shape[2]
    mean = total / pixels
    std = (total_sq / pixels - mean.pow(2)).clamp_min(1e-8).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
