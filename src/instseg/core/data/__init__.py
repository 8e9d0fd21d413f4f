"""Datasets: every item is {"image": 3xHxW float32 in [0, 1], "labels": HxW int64, "name": str}."""

from instseg.core.data.datasets import SyntheticLeaves, build_datasets, estimate_mean_std, parse_data_spec

__all__ = ["SyntheticLeaves", "build_datasets", "estimate_mean_std", "parse_data_spec"]
