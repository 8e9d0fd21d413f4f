"""Datasets: every item is {"image": 3xHxW float32 in [0, 1], "labels": HxW int64, "name": str}.

Names are imported lazily: the torch-free modules of this package (samples, cvppp, folder,
layouts, checks, synthetic) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LabelledImages": "instseg.data.datasets",
    "SyntheticLeaves": "instseg.data.datasets",
    "build_datasets": "instseg.data.datasets",
    "estimate_mean_std": "instseg.data.datasets",
    "estimate_object_size": "instseg.data.datasets",
    "parse_data_spec": "instseg.data.layouts",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instseg.data' has no attribute '{name}'")
