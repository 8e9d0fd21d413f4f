"""Dataset construction from a `--data` spec and per-dataset normalisation statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from instseg.core.data.synthetic import render_plant
from instseg.errors import ConfigError


class SyntheticLeaves(Dataset):
    """Generated rosettes (see `synthetic.py`): nothing to download, deterministic per index."""

    def __init__(self, length: int, image_size: int = 128, seed: int = 0, split: str = "train") -> None:
        if length < 1:
            raise ConfigError(f"synthetic dataset length must be >= 1, got {length}")
        self.length = length
        self.image_size = image_size
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, labels = render_plant(self.seed, index, self.image_size, self.split)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "name": f"synthetic-{self.split}-{index:05d}",
        }


@dataclass(frozen=True)
class DataSpec:
    kind: str  # "synthetic" (more kinds: cvppp, folder)
    path: str | None = None


def parse_data_spec(spec: str) -> DataSpec:
    """`synthetic` or `KIND:PATH`."""
    if spec == "synthetic":
        return DataSpec("synthetic")
    kind, sep, path = spec.partition(":")
    if sep and kind in {"cvppp", "folder"} and path:
        return DataSpec(kind, path)
    raise ConfigError(f"unknown --data '{spec}': use 'synthetic', 'cvppp:PATH' or 'folder:PATH'")


def build_datasets(
    spec: str,
    *,
    image_size: int,
    seed: int,
    train_size: int,
    val_size: int,
) -> tuple[Dataset, Dataset]:
    """Train and validation datasets for a `--data` spec."""
    data = parse_data_spec(spec)
    if data.kind == "synthetic":
        return (
            SyntheticLeaves(train_size, image_size, seed, "train"),
            SyntheticLeaves(val_size, image_size, seed, "val"),
        )
    raise ConfigError(f"--data {data.kind}: is not supported yet")


def estimate_mean_std(dataset: Dataset, max_images: int = 32) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over (up to) the first `max_images` images."""
    n = min(len(dataset), max_images)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for i in range(n):
        image = dataset[i]["image"].double()
        total += image.sum(dim=(1, 2))
        total_sq += image.pow(2).sum(dim=(1, 2))
        pixels += image.shape[1] * image.shape[2]
    mean = total / pixels
    std = (total_sq / pixels - mean.pow(2)).clamp_min(1e-8).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
