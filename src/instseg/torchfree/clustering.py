"""From network outputs to an instance label map (numpy only: the ONNX path uses it too).

The semantic head selects foreground pixels; their embeddings are grouped into instances
by one of two methods, both of which fit centers on a subsample of the foreground (so the
cost hardly grows with the image) and then give every foreground pixel its nearest center:

- `kmeans`: k = the counter head's count (rounded, at least 1). Several greedy k-means++
  seedings are screened with a few Lloyd steps on a quarter of the sample; the one with
  the lowest inertia is refined on the whole sample. The default: it scored the better SBD
  on the synthetic validation set and on CVPPP A1 (docs/prediction.md, README).
- `meanshift`: the paper's method, no count needed. Pick an unassigned point as seed, move a
  center to the mean of the unassigned points within `bandwidth` until it settles, assign
  those points, repeat. The discriminative loss pulls pixels within delta_v of their center
  and pushes centers 2 delta_d apart, so a bandwidth between them separates instances.

Post-processing (`postprocess`): drop instances under `min_size` pixels, fill holes (a
background region enclosed by one instance joins it), relabel 1..N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from instseg.errors import ConfigError, DataError

CLUSTER_METHODS = ("kmeans", "meanshift")
DEFAULT_METHOD = "kmeans"
SCREENING_STEPS = 3  # Lloyd steps that rank a k-means++ seeding before the best one is refined


@dataclass(frozen=True)
class ClusterParams:
    method: str = DEFAULT_METHOD
    bandwidth: float = 1.5  # meanshift radius in embedding space; the loss's delta_d by default
    min_size: int = 0  # instances with fewer pixels are dropped (0 keeps all)
    fill_holes: bool = True
    sample_size: int = 8192  # points used to fit centers; all points are then assigned
    iterations: int = 10  # Lloyd / mean-shift steps at most per fit
    restarts: int = 8  # k-means++ seedings screened (on a quarter of the sample); the best is refined
    max_clusters: int = 64  # meanshift stops seeding here (bounds its cost on poor embeddings)
    seed: int = 0
    # Cluster at the input's resolution (outputs up-sampled bilinearly, at most MAX_CLUSTER_PIXELS)
    # instead of at the working size then up-sampling the labels: +0.01 SBD, +0.006 FG Dice on A1.
    full_resolution: bool = True

    def __post_init__(self) -> None:
        if self.method not in CLUSTER_METHODS:
            raise ConfigError(f"unknown clustering method '{self.method}'; choose from {', '.join(CLUSTER_METHODS)}")
        bad = [name for name, ok in (
            ("bandwidth", self.bandwidth > 0), ("min_size", self.min_size >= 0),
            ("sample_size", self.sample_size >= 1), ("iterations", self.iterations >= 1),
            ("restarts", self.restarts >= 1), ("max_clusters", self.max_clusters >= 1)) if not ok]
        if bad:
            raise ConfigError(f"invalid clustering option(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ClusterParams":
        """The clustering defaults of a training run (its config.json `config` section):
        its method, and a bandwidth equal to the delta_d its loss was trained with."""
        return cls(method=config.get("cluster", DEFAULT_METHOD), bandwidth=float(config.get("delta_d", 1.5)),
                   seed=int(config.get("seed", 0)))

    def override(self, **changes: Any) -> "ClusterParams":
        """A copy with the options that are not None replaced (CLI flags over run defaults)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _check_finite(embedding: np.ndarray) -> None:
    if not np.isfinite(embedding).all():
        raise DataError("embedding contains NaN or Inf values; the model output is not usable")


def _sq_dist(points: np.ndarray, centers: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """N x K squared distances; `norms` (the points' squared norms) may be passed in when reused."""
    norms = (points * points).sum(1) if norms is None else norms
    d = norms[:, None] - 2.0 * points @ centers.T + (centers * centers).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _subsample(points: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return points if len(points) <= size else points[rng.choice(len(points), size, replace=False)]


def _kmeans_pp(points: np.ndarray, k: int, restarts: int, rng: np.random.Generator) -> np.ndarray:
    """`restarts` greedy k-means++ seedings at once (R x k' x D, k' <= k): each new center is
    the best of a few candidates drawn by D^2. Batched over the seedings, so the Python loop
    runs k times, not k x restarts."""
    trials = 2 + int(math.log(k))
    rows = np.arange(restarts)
    dims = points.shape[1]
    norms = (points * points).sum(1)
    transposed = np.ascontiguousarray(points.T)
    first = points[rng.integers(len(points), size=restarts)]
    centers = np.empty((restarts, k, dims), dtype=points.dtype)
    centers[:, 0] = first
    closest = _sq_dist(points, first, norms).T  # R x N: each point's distance to its nearest center
    for j in range(1, k):
        cumulative = np.cumsum(closest, axis=1, dtype=np.float64)
        if (cumulative[:, -1] <= 0).any():  # every point coincides with a center: fewer clusters than asked
            return centers[:, :j]
        candidates = points[_draw(cumulative, trials, rng)]  # R x T x D
        products = (candidates.reshape(-1, dims) @ transposed).reshape(restarts, trials, -1)
        distances = norms - 2.0 * products + (candidates * candidates).sum(-1, keepdims=True)
        options = np.minimum(closest[:, None, :], np.maximum(distances, 0.0))  # R x T x N
        best = options.sum(-1).argmin(1)
        centers[:, j] = candidates[rows, best]
        closest = options[rows, best]
    return centers


def _draw(cumulative: np.ndarray, trials: int, rng: np.random.Generator) -> np.ndarray:
    """R x T indices drawn per row with probability proportional to the row's increments of
    `cumulative` (R x N running sums): one searchsorted over the rows laid end to end."""
    rows, n = cumulative.shape
    offsets = np.concatenate([[0.0], np.cumsum(cumulative[:, -1])[:-1]])[:, None]
    targets = rng.random((rows, trials)) * cumulative[:, -1:] + offsets
    flat = np.searchsorted((cumulative + offsets).ravel(), targets.ravel(), side="right").reshape(rows, trials)
    return np.clip(flat - np.arange(rows)[:, None] * n, 0, n - 1)


def _screen(points: np.ndarray, centers: np.ndarray, steps: int) -> np.ndarray:
    """A few Lloyd steps on R seedings at once (R x k x D); returns the one with the lowest
    inertia. Laid out as R x k x N scores and 2-D matrix products: numpy's argmin over a short
    last axis is several times slower. A point exactly as near to two centers counts for both,
    which only nudges how seedings rank."""
    restarts, k, dims = centers.shape
    transposed = np.ascontiguousarray(points.T)
    for step in range(steps + 1):
        products = (centers.reshape(-1, dims) @ transposed).reshape(restarts, k, -1)
        scores = (centers * centers).sum(-1, keepdims=True) - 2.0 * products  # R x k x N
        lowest = scores.min(1, keepdims=True)
        if step == steps:
            break
        members = (scores == lowest).astype(points.dtype)
        sums = (members.reshape(restarts * k, -1) @ points).reshape(restarts, k, dims)
        sizes = members.sum(-1, keepdims=True)
        centers = np.where(sizes > 0, sums / np.maximum(sizes, 1), centers)
    return centers[int(lowest.sum((1, 2)).argmin())]  # inertia up to the points' norms, equal for all


def _center_means(points: np.ndarray, assign: np.ndarray, centers: np.ndarray) -> np.ndarray:
    onehot = (assign[:, None] == np.arange(len(centers))[None, :]).astype(points.dtype)
    sizes = onehot.sum(0)[:, None]
    return np.where(sizes > 0, (onehot.T @ points) / np.maximum(sizes, 1), centers)


def _nearest(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's nearest center and its squared distance minus the point's own norm
    (constant per point, so it is left out of the argmin)."""
    scores = (centers * centers).sum(1)[None, :] - 2.0 * points @ centers.T
    nearest = scores.argmin(1)
    return nearest, scores[np.arange(len(points)), nearest]


def _lloyd(points: np.ndarray, centers: np.ndarray, iterations: int, tolerance: float) -> np.ndarray:
    """Lloyd iterations until the centers move less than `tolerance` (sum of squared shifts)."""
    for _ in range(iterations):
        updated = _center_means(points, _nearest(points, centers)[0], centers)
        settled = float(((updated - centers) ** 2).sum()) <= tolerance
        centers = updated
        if settled:
            break
    return centers


def kmeans(points: np.ndarray, k: int, params: ClusterParams = ClusterParams()) -> np.ndarray:
    """Cluster N x D points into at most k groups; returns ids 0..k'-1 per point.

    k is clipped to [1, number of distinct points], so asking for more clusters than
    points never fails.
    """
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    points = points.astype(np.float32, copy=False)
    rng = np.random.default_rng(params.seed)
    sample = _subsample(points, params.sample_size, rng)
    seeding = _subsample(sample, max(1, params.sample_size // 4), rng)
    k = int(max(1, min(k, len(seeding))))
    tolerance = 1e-4 * float(sample.var(0).mean())  # relative to the spread of the data
    best = _screen(seeding, _kmeans_pp(seeding, k, params.restarts, rng), SCREENING_STEPS)
    return _nearest(points, _lloyd(sample, best, params.iterations, tolerance))[0]


def _shift(pool: np.ndarray, start: np.ndarray, radius2: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Move a center to the mean of the pool points within the bandwidth until it settles."""
    center = start
    inside = _sq_dist(pool, center[None])[:, 0] <= radius2
    for _ in range(iterations):
        moved = pool[inside].mean(0) if inside.any() else center
        settled = float(((moved - center) ** 2).sum()) <= 1e-6 * radius2
        center = moved
        inside = _sq_dist(pool, center[None])[:, 0] <= radius2
        if settled:
            break
    return center, inside


def meanshift(points: np.ndarray, params: ClusterParams = ClusterParams()) -> np.ndarray:
    """Cluster N x D points by thresholding around shifted seeds; ids 0..k-1 per point.

    Centers come from a subsample; every point then joins its nearest center. A center that
    settles within the bandwidth of an earlier one (it gathered that cluster's rim) merges
    into it, and one that gathered a single sample point (an outlier) is dropped unless it
    is the only one. Seeding stops at `max_clusters` centers: on embeddings that never
    formed clusters (an untrained model) the cost stays bounded.
    """
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    points = points.astype(np.float32, copy=False)
    rng = np.random.default_rng(params.seed)
    sample = _subsample(points, params.sample_size, rng)
    radius2 = float(params.bandwidth) ** 2
    unassigned = np.ones(len(sample), dtype=bool)
    centers: list[np.ndarray] = []
    support: list[int] = []
    for seed in rng.permutation(len(sample)):
        if not unassigned[seed]:
            continue
        if len(centers) >= params.max_clusters:
            break
        pool_index = np.flatnonzero(unassigned)
        center, inside = _shift(sample[pool_index], sample[seed], radius2, params.iterations)
        members = int(inside.sum()) + (not inside[np.searchsorted(pool_index, seed)])
        unassigned[pool_index[inside]] = False
        unassigned[seed] = False
        near = _sq_dist(center[None], np.stack(centers))[0] if centers else np.zeros(0)
        if len(near) and near.min() <= radius2:  # the rim of a cluster already found: join it
            support[int(near.argmin())] += members
        else:
            centers.append(center)
            support.append(members)
    keep = np.array(support) > 1
    chosen = np.stack(centers)[keep] if keep.any() else np.stack(centers)
    return _nearest(points, chosen)[0]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Map the non-zero ids present to 1..N in increasing order of id."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def _run_minimum(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Minimum label over each horizontal run of mask pixels, in one vectorised pass.

    A cumulative minimum over the flattened image, with every run offset so that no
    earlier run can win over a later one: forwards the offsets decrease run by run,
    backwards they increase.
    """
    flat_mask = mask.ravel()
    starts = flat_mask.copy()
    starts[1:] &= ~flat_mask[:-1]
    starts[:: mask.shape[1]] = flat_mask[:: mask.shape[1]]
    run = np.cumsum(starts)
    step = labels.size + 1
    values = np.where(flat_mask, labels.ravel(), labels.size)  # pixels outside runs never win
    forward_offset = (run[-1] - run) * step
    forward = np.minimum.accumulate(values + forward_offset) - forward_offset
    backward_offset = run * step
    backward = np.minimum.accumulate((values + backward_offset)[::-1])[::-1] - backward_offset
    return np.where(flat_mask, np.minimum(forward, backward), labels.size).reshape(labels.shape)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean H x W mask: per pixel the flat index of its
    component's first pixel, -1 outside the mask.

    Alternating row and column passes spread each run's minimum along the whole run at
    once, and pointer jumping follows labels to their labels; a handful of rounds suffice
    for plant-like shapes (each round crosses one more turn of a winding region).
    """
    h, w = mask.shape
    outside = h * w
    labels = np.where(mask, np.arange(h * w).reshape(h, w), outside)
    while True:
        low = _run_minimum(labels, mask)
        low = np.ascontiguousarray(_run_minimum(np.ascontiguousarray(low.T), np.ascontiguousarray(mask.T)).T)
        flat = low.ravel()
        inside = flat < outside
        for _ in range(4):  # pointer jumping: follow each pixel's label to its label's label
            flat[inside] = flat[flat[inside]]
        if np.array_equal(low, labels):
            return np.where(mask, labels, -1)
        labels = low


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instances with fewer than `min_size` pixels to background."""
    if min_size <= 1 or not labels.any():
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _neighbours(x: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(here, there) views covering every ordered pair of 4-neighbouring pixels."""
    return (x[1:], x[:-1]), (x[:-1], x[1:]), (x[:, 1:], x[:, :-1]), (x[:, :-1], x[:, 1:])


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Background regions that do not touch the border and border one instance only join it."""
    background = labels == 0
    if background.all() or not background.any():
        return labels
    comp = connected_components(background)
    pairs = [np.stack([comp_here[edge], label_there[edge]], 1)
             for (bg_here, bg_there), (comp_here, _), (_, label_there)
             in zip(_neighbours(background), _neighbours(comp), _neighbours(labels))
             for edge in [bg_here & ~bg_there]]  # (hole candidate, instance next to it)
    pairs = np.unique(np.concatenate(pairs), axis=0)
    ids, neighbours = np.unique(pairs[:, 0], return_counts=True)
    border = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    enclosed = ids[(neighbours == 1) & ~np.isin(ids, border)]
    if not len(enclosed):
        return labels
    owners = pairs[np.isin(pairs[:, 0], enclosed)]  # one row per hole, sorted by component id
    filled = labels.copy()
    hole = np.isin(comp, owners[:, 0])
    filled[hole] = owners[np.searchsorted(owners[:, 0], comp[hole]), 1]
    return filled


def postprocess(labels: np.ndarray, params: ClusterParams = ClusterParams()) -> np.ndarray:
    """Drop small instances, fill holes, relabel 1..N (in that order: a dropped fragment
    inside an instance becomes a hole that the instance then fills)."""
    labels = remove_small(labels, params.min_size)
    if params.fill_holes:
        labels = fill_holes(labels)
    return relabel_sequential(labels)


def cluster_embeddings(
    embedding: np.ndarray,
    foreground: np.ndarray,
    n_instances: int,
    params: ClusterParams = ClusterParams(),
) -> np.ndarray:
    """D x H x W embeddings + H x W foreground mask -> H x W int32 label map (0 = background).

    `n_instances` is used by kmeans only; meanshift finds the number itself.
    """
    if embedding.ndim != 3 or foreground.shape != embedding.shape[1:]:
        raise ValueError(f"embedding {embedding.shape} and foreground {foreground.shape} do not match")
    _check_finite(embedding)
    labels = np.zeros(foreground.shape, dtype=np.int32)
    fg = foreground.astype(bool)
    if not fg.any():
        return labels
    points = embedding[:, fg].T
    ids = kmeans(points, n_instances, params) if params.method == "kmeans" else meanshift(points, params)
    labels[fg] = ids + 1
    return postprocess(labels, params)


def instance_count(count: float, max_instances: int) -> int:
    """The counter head's normalised output as a number of instances (at least 1)."""
    return max(1, int(round(float(count) * max_instances)))


def instances_from_outputs(
    semantic: np.ndarray,
    embedding: np.ndarray,
    count: float,
    max_instances: int,
    params: ClusterParams = ClusterParams(),
) -> np.ndarray:
    """One image's raw outputs (2 x H x W logits, D x H x W, normalised count) -> label map."""
    foreground = semantic[1] > semantic[0]
    return cluster_embeddings(embedding, foreground, instance_count(count, max_instances), params)
