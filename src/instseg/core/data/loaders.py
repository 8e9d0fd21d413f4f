"""DataLoaders for evaluation: images keep their original size, so a batch holds one size only."""

from __future__ import annotations

from typing import Sequence

from torch.utils.data import DataLoader, Dataset


def size_grouped_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most `batch_size` images of equal size, in dataset order per size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [indices[i:i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)]


def eval_loader(dataset: Dataset, batch_size: int = 8, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Deterministic order; datasets without `sizes()` go one image per batch (always safe)."""
    if hasattr(dataset, "sizes"):
        batches = size_grouped_batches(dataset.sizes(), batch_size)
    else:
        batches = [[i] for i in range(len(dataset))]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory)
