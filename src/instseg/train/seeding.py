"""Seeds: one run seed gives the same initialisation everywhere and a distinct, reproducible
data stream per epoch, process and DataLoader worker (so a resumed run repeats its epochs)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive numpy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the DataLoader generator for one epoch on one process (worker seeds derive from it)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
