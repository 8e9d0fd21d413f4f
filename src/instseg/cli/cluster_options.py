"""Clustering options shared by the verbs that turn network outputs into instances."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from instseg.core.clustering import CLUSTER_METHODS, ClusterParams

Cluster = Annotated[Optional[str], typer.Option(
    "--cluster", help=f"{' or '.join(CLUSTER_METHODS)} (default: the run's, else the library default).")]
MinSize = Annotated[Optional[int], typer.Option(
    "--min-size", help="Drop instances under this many pixels at the working size (default 0: keep all).")]
FillHoles = Annotated[Optional[bool], typer.Option(
    "--fill-holes/--no-fill-holes", help="Give background enclosed by one instance to it (default on).")]
Bandwidth = Annotated[Optional[float], typer.Option(
    "--bandwidth", help="meanshift radius in embedding space (default: the run's delta_d).")]


def cluster_params(base: ClusterParams, cluster: str | None, min_size: int | None, fill_holes: bool | None,
                   bandwidth: float | None) -> ClusterParams:
    """The run's clustering defaults with the options the user gave."""
    return base.override(method=cluster, min_size=min_size, fill_holes=fill_holes, bandwidth=bandwidth)
