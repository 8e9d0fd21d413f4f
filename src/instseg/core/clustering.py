"""From network outputs to an instance label map (numpy only: the ONNX path uses it too).

The semantic head selects foreground pixels; their embeddings are grouped into instances.
`kmeans` uses the counter head's count (rounded, at least 1): k-means++ seeding and Lloyd
iterations on a subsample, then every foreground pixel goes to its nearest centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLUSTER_METHODS = ("kmeans",)


@dataclass(frozen=True)
class ClusterParams:
    method: str = "kmeans"
    sample_size: int = 4096  # points used to fit centres; all points are then assigned
    iterations: int = 15
    seed: int = 0


def _check_finite(embedding: np.ndarray) -> None:
    if not np.isfinite(embedding).all():
        raise ValueError("embedding contains NaN or Inf values; the model output is not usable")


def _sq_dist(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (points * points).sum(1)[:, None] - 2.0 * points @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [points[rng.integers(len(points))]]
    closest = _sq_dist(points, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # all remaining points coincide with a centre
            break
        idx = rng.choice(len(points), p=closest / total)
        centres.append(points[idx])
        closest = np.minimum(closest, _sq_dist(points, points[idx][None])[:, 0])
    return np.stack(centres)


def kmeans(points: np.ndarray, k: int, params: ClusterParams = ClusterParams()) -> np.ndarray:
    """Cluster N x D points into at most k groups; returns ids 0..k'-1 per point.

    k is clipped to [1, number of distinct points], so asking for more clusters than
    points never fails.
    """
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    points = points.astype(np.float32, copy=False)
    rng = np.random.default_rng(params.seed)
    sample = points if n <= params.sample_size else points[rng.choice(n, params.sample_size, replace=False)]
    k = int(max(1, min(k, len(sample))))
    centres = _kmeans_pp(sample, k, rng)
    for _ in range(params.iterations):
        assign = _sq_dist(sample, centres).argmin(1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, sample)
        sizes = np.bincount(assign, minlength=len(centres))[:, None]
        updated = np.where(sizes > 0, sums / np.maximum(sizes, 1), centres)
        if np.allclose(updated, centres, atol=1e-5):
            break
        centres = updated
    return _sq_dist(points, centres).argmin(1)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Map the non-zero ids present to 1..N in order of first appearance by id value."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def cluster_embeddings(
    embedding: np.ndarray,
    foreground: np.ndarray,
    n_instances: int,
    params: ClusterParams = ClusterParams(),
) -> np.ndarray:
    """D x H x W embeddings + H x W foreground mask -> H x W int32 label map (0 = background)."""
    if embedding.ndim != 3 or foreground.shape != embedding.shape[1:]:
        raise ValueError(f"embedding {embedding.shape} and foreground {foreground.shape} do not match")
    _check_finite(embedding)
    if params.method not in CLUSTER_METHODS:
        raise ValueError(f"unknown clustering method '{params.method}'; choose from {', '.join(CLUSTER_METHODS)}")
    labels = np.zeros(foreground.shape, dtype=np.int32)
    fg = foreground.astype(bool)
    if not fg.any():
        return labels
    points = embedding[:, fg].T
    labels[fg] = kmeans(points, n_instances, params) + 1
    return relabel_sequential(labels)


def instances_from_outputs(
    semantic: np.ndarray,
    embedding: np.ndarray,
    count: float,
    max_instances: int,
    params: ClusterParams = ClusterParams(),
) -> np.ndarray:
    """One image's raw outputs (2 x H x W logits, D x H x W, normalised count) -> label map."""
    foreground = semantic[1] > semantic[0]
    n_instances = max(1, int(round(float(count) * max_instances)))
    return cluster_embeddings(embedding, foreground, n_instances, params)
