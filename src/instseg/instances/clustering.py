"""From network outputs to an instance label map (numpy only: the ONNX path uses it too).

The semantic head selects foreground pixels; their embeddings are grouped into instances
by one of three methods. The first two fit centers on a subsample of the foreground (so the
cost hardly grows with the image) and then give every foreground pixel its nearest center:

- `kmeans`: k = the counter head's count (rounded, at least 1). Several greedy k-means++
  seedings are screened with a few Lloyd steps on a quarter of the sample; the one with
  the lowest inertia is refined on the whole sample. The default: it scored the better SBD
  on the synthetic validation set and on CVPPP A1 (docs/prediction.md, README).
- `meanshift`: the paper's method, no count needed. Pick an unassigned point as seed, move a
  center to the mean of the unassigned points within `bandwidth` until it settles, assign
  those points, repeat. The discriminative loss pulls pixels within delta_v of their center
  and pushes centers 2 delta_d apart, so a bandwidth between them separates instances.
- `regions`: for crowded scenes (hundreds of nuclei), no count needed. Each connected region
  of the foreground is one instance when its embeddings lie within `bandwidth` / 2 of their mean,
  else meanshift splits it; every instance is then one connected piece. Embeddings only have
  to tell touching objects apart, never distant ones (which collide when there are hundreds),
  and the cost grows with the number of regions, not with its square.

The spatial objective's embeddings (position + offset, a bandwidth, a seed logit: `seeds.py`) are
read by one method of their own, no count needed:

- `seeds`: the highest remaining seed's centre and bandwidth claim every foreground pixel whose
  Gaussian probability for it exceeds 0.5; repeat until no seed is above `seed_threshold`
  (Neven et al. 2019).

Post-processing (`postprocess.postprocess`): drop instances under `min_size` pixels, fill
holes (a background region enclosed by one instance joins it), relabel 1..N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from instseg import limits
from instseg.errors import ConfigError
from instseg.instances.postprocess import postprocess, split_pieces
from instseg.instances.seeds import check_finite, seed_labels

CLUSTER_METHODS = ("kmeans", "meanshift", "regions", "seeds")
DEFAULT_METHOD = "kmeans"
# which methods read which embeddings (an objective's `ObjectiveSpec.embeddings`); the first is the default
METHODS_FOR = {"discriminative": ("kmeans", "meanshift", "regions"), "spatial": ("seeds",)}
AUTO = "auto"  # a training run's choice, measured on its validation images (train/cluster_choice.py)
CROWDED = 64  # more instances per image than this: `auto` guesses `regions` until it has measured
SCREENING_STEPS = 3  # Lloyd steps that rank a k-means++ seeding before the best one is refined


def resolve_method(method: str, max_instances: int) -> str:
    """A run's method; `auto` before its measured choice (an unfinished run) is a guess from the
    largest instance count of its data (`max_instances` is raised to it). Only discriminative
    runs keep `auto`: a family with one method is given it when the run starts
    (`objectives.check_config`)."""
    if method != AUTO:
        return method
    return "regions" if max_instances > CROWDED else "kmeans"


def embeddings_read_by(method: str) -> str:
    """The embeddings a method reads (METHODS_FOR): a run's method tells prediction what its
    objective's embeddings are, with no need for the objective's plugin."""
    return next(family for family, methods in METHODS_FOR.items() if method in methods)


@dataclass(frozen=True)
class ClusterParams:
    method: str = DEFAULT_METHOD
    embeddings: str = "discriminative"  # what the embedding channels are (METHODS_FOR): which methods apply
    seed_threshold: float = 0.5  # `seeds`: stop when no remaining seed scores above this
    bandwidth: float = 1.5  # meanshift radius in embedding space; the loss's delta_d by default
    min_size: int = 0  # instances with fewer pixels are dropped (0 keeps all)
    fill_holes: bool = True
    sample_size: int = 8192  # points used to fit centers; all points are then assigned
    iterations: int = 10  # Lloyd / mean-shift steps at most per fit
    restarts: int = 8  # k-means++ seedings screened (on a quarter of the sample); the best is refined
    max_clusters: int = 64  # meanshift stops seeding here (per region for `regions`: bounds the cost)
    seed: int = 0
    # Cluster at the input's resolution (outputs up-sampled bilinearly, at most MAX_CLUSTER_PIXELS)
    # instead of at the working size then up-sampling the labels: +0.01 SBD, +0.006 FG Dice on A1.
    full_resolution: bool = True

    def __post_init__(self) -> None:
        if self.method not in CLUSTER_METHODS:
            raise ConfigError(f"unknown clustering method '{self.method}'; choose from {', '.join(CLUSTER_METHODS)}")
        if self.embeddings not in METHODS_FOR:
            raise ConfigError(f"unknown embeddings '{self.embeddings}'; expected one of {', '.join(METHODS_FOR)}")
        if self.method not in METHODS_FOR[self.embeddings]:
            raise ConfigError(f"clustering method '{self.method}' does not read {self.embeddings} embeddings; "
                              f"choose from {', '.join(METHODS_FOR[self.embeddings])}")
        # the ranges ONNX metadata and checkpoints are read with (limits.py): they bound the work
        bad = [f"{name}={getattr(self, name)!r} (expected {expected})" for name, ok, expected in (
            ("bandwidth", limits.is_number_in(self.bandwidth, (0, math.inf)) and self.bandwidth > 0, "a number > 0"),
            ("seed_threshold", limits.is_number_in(self.seed_threshold, (0, 1)) and 0 < self.seed_threshold < 1,
             "a number between 0 and 1"),
            ("min_size", limits.is_int_in(self.min_size, limits.CLUSTER_MIN_SIZE),
             limits.describe(limits.CLUSTER_MIN_SIZE)),
            ("sample_size", limits.is_int_in(self.sample_size, limits.CLUSTER_SAMPLE_SIZE),
             limits.describe(limits.CLUSTER_SAMPLE_SIZE)),
            ("iterations", limits.is_int_in(self.iterations, limits.CLUSTER_ITERATIONS),
             limits.describe(limits.CLUSTER_ITERATIONS)),
            ("restarts", limits.is_int_in(self.restarts, limits.CLUSTER_RESTARTS),
             limits.describe(limits.CLUSTER_RESTARTS)),
            ("max_clusters", limits.is_int_in(self.max_clusters, limits.CLUSTER_MAX_CLUSTERS),
             limits.describe(limits.CLUSTER_MAX_CLUSTERS)),
            ("seed", limits.is_int_in(self.seed, limits.SEED), limits.describe(limits.SEED))) if not ok]
        if bad:
            raise ConfigError(f"invalid clustering option(s): {'; '.join(bad)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ClusterParams":
        """The clustering defaults of a training run (its config.json `config` section): its
        method (which says what its embeddings are), and a bandwidth equal to the delta_d its
        loss was trained with."""
        method = resolve_method(config.get("cluster", DEFAULT_METHOD), int(config.get("max_instances", 20)))
        return cls(method=method, embeddings=embeddings_read_by(method), bandwidth=float(config.get("delta_d", 1.5)),
                   seed=int(config.get("seed", 0)))

    def override(self, **changes: Any) -> "ClusterParams":
        """A copy with the options that are not None replaced (CLI flags over run defaults)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


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


def cluster_embeddings(
    embedding: np.ndarray,
    foreground: np.ndarray,
    n_instances: int,
    params: ClusterParams = ClusterParams(),
) -> np.ndarray:
    """D x H x W embeddings + H x W foreground mask -> H x W int32 label map (0 = background).

    `n_instances` is used by kmeans only; meanshift and regions find the number themselves.
    """
    if embedding.ndim != 3 or foreground.shape != embedding.shape[1:]:
        raise ValueError(f"embedding {embedding.shape} and foreground {foreground.shape} do not match")
    check_finite(embedding)
    labels = np.zeros(foreground.shape, dtype=np.int32)
    fg = foreground.astype(bool)
    if not fg.any():
        return labels
    if params.method == "seeds":
        labels = split_pieces(seed_labels(embedding, fg, threshold=params.seed_threshold, min_size=params.min_size))
    elif params.method == "regions":
        labels = split_pieces(region_labels(embedding, fg, params))
    else:
        points = embedding[:, fg].T
        ids = kmeans(points, n_instances, params) if params.method == "kmeans" else meanshift(points, params)
        labels[fg] = ids + 1
    return postprocess(labels, params.min_size, params.fill_holes)


def region_labels(embedding: np.ndarray, foreground: np.ndarray, params: ClusterParams) -> np.ndarray:
    """Instance ids per foreground pixel: one per connected region, several where the region's
    embeddings spread beyond half the bandwidth from their mean (touching objects, whose
    centers the loss pushes 2 delta_d apart, while it pulls pixels within delta_v of theirs),
    found by meanshift."""
    regions, _ = ndimage.label(foreground)
    labels = np.zeros(foreground.shape, dtype=np.int32)
    radius2 = (float(params.bandwidth) / 2) ** 2
    next_id = 1
    for region, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == region
        points = embedding[(slice(None), *box)][:, inside].T
        spread = float(((points - points.mean(0)) ** 2).sum(1).max()) if len(points) > 1 else 0.0
        ids = meanshift(points, params) if spread > radius2 else np.zeros(len(points), dtype=np.int64)
        labels[box][inside] = ids + next_id
        next_id += int(ids.max()) + 1
    return labels


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
