"""Seeds and RNG states: one run seed gives the same initialisation everywhere and a distinct,
reproducible data stream per epoch, process and DataLoader worker; the states are saved in
checkpoints as tensors, so a resumed run repeats its epochs."""

from __future__ import annotations

import random
from typing import Any

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


def capture_rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states as tensors and plain data.

    numpy's and python's states are tuples holding arrays and big ints; stored as int64
    tensors they load with `torch.load(weights_only=True)` and no pickled object is needed.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))

