"""DataLoaders for evaluation: images keep their original size, so a batch holds one size only."""

from __future__ import annotations

from typing import Sequence

from torch.utils.data import DataLoader, Dataset, Subset


def size_grouped_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most `batch_size` images of equal size, in dataset order per size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [indices[i:i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)]


def item_sizes(dataset: Dataset) -> list[tuple[int, int]] | None:
    """(H, W) per item from the dataset's `sizes()`, seen through a Subset (a rank's share)."""
    if isinstance(dataset, Subset):
        sizes = item_sizes(dataset.dataset)
        return None if sizes is None else [sizes[i] for i in dataset.indices]
    return dataset.sizes() if hasattr(dataset, "sizes") else None


def eval_loader(dataset: Dataset, batch_size: int = 8, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Deterministic order; datasets without `sizes()` go one image per batch (always safe)."""
    sizes = item_sizes(dataset)
    if sizes is not None:
        batches = size_grouped_batches(sizes, batch_size)
    else:
        batches = [[i] for i in range(len(dataset))]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory)
