"""Seed clustering of spatial embeddings (Neven et al. CVPR 2019): instances without a count.

The embedding holds, per pixel, its predicted instance centre (channels 0, 1, absolute: the model
added the coordinate grid), raw sigmas (bandwidth s = exp(10 * sigma) per axis) and a seed logit
(last channel). Greedily, the unclustered foreground pixel with the highest seed score is a seed;
its centre C and bandwidth s propose every foreground pixel with
phi = exp(-sum_a s_a (e_a - C_a)^2) > 0.5. A proposal larger than max(min_size, 1) pixels, more
than half of them still unclustered, makes its unclustered pixels an instance; either way its
pixels (the seed among them) leave the unclustered set. The authors' code
(davyneven/SpatialEmbeddings) differs: it clusters only pixels whose seed score is > 0.5, not the
semantic foreground, stops once 128 or fewer remain, leaves the seed out of the half test and lets
a new instance relabel pixels of earlier ones; here every seed above the threshold is tried, and
an instance only takes unclustered pixels.

Speed: phi > 0.5 means sum_a s_a (e_a - C_a)^2 < ln 2, so a proposal lies within
sqrt(ln 2 / min_a s_a) of C on each axis. The foreground is sorted once into a grid of cells
over its embedding, each cell row of a seed's window is one contiguous slice, and the seeds are
walked in one pass over the candidates sorted by score: the cost grows with the pixels near each
seed, not with the whole foreground per seed. A window that covers most of the grid (a tiny s)
scans every pixel instead, with the same result.

numpy and scipy only: the ONNX Runtime path imports this without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from instseg.errors import DataError

LN2 = math.log(2.0)
SIGMA_SCALE = 10.0  # s = exp(SIGMA_SCALE * sigma), as in the loss
EXPONENT_LIMIT = 80.0  # |10 sigma| is clipped here so that s stays finite and > 0 (radius 1e-17..2e17)
RADIUS_SLACK = 1e-6  # windows grow by this fraction so that rounding never leaves a proposed pixel out
MAX_CELLS = 1 << 16  # grid cells at most: cell ids fit 16 bits, which numpy radix-sorts
RADIUS_SAMPLE = 1024  # seeds whose median radius sets the cell size


def seed_scores(embedding: np.ndarray) -> np.ndarray:
    """H x W float32 seed score, sigmoid of the last channel (expit: no overflow for any logit)."""
    _check_layout(embedding)
    return expit(np.asarray(embedding[-1], dtype=np.float32))


def check_finite(embedding: np.ndarray) -> None:
    """A DataError for NaN / Inf outputs (every clustering method's check: `clustering` uses it too)."""
    if not np.isfinite(embedding).all():
        raise DataError("embedding contains NaN or Inf values; the model output is not usable")


def _bandwidths(sigma: np.ndarray) -> np.ndarray:
    """2 x N float64 bandwidths s = exp(10 sigma) from n_sigma x N raw sigmas (1 row: both axes)."""
    exponent = np.clip(SIGMA_SCALE * np.asarray(sigma, dtype=np.float64), -EXPONENT_LIMIT, EXPONENT_LIMIT)
    s = np.exp(exponent)
    return np.repeat(s, 2, axis=0) if len(s) == 1 else s


def _check_layout(embedding: np.ndarray, foreground: np.ndarray | None = None) -> None:
    if embedding.ndim != 3 or embedding.shape[0] not in (4, 5):
        raise ValueError(f"expected a D x H x W embedding with D = 4 or 5 (2 + n_sigma + 1), got shape "
                         f"{embedding.shape}")
    if foreground is not None and foreground.shape != embedding.shape[1:]:
        raise ValueError(f"foreground shape {foreground.shape} does not match the embedding's {embedding.shape[1:]}")


@dataclass(frozen=True)
class _Grid:
    """Foreground pixels sorted by the cell of their embedding (row-major cell id)."""

    order: np.ndarray  # grid position -> index among the foreground pixels (raster order)
    rows: np.ndarray  # embedding channel 0 per grid position, float64
    cols: np.ndarray  # embedding channel 1 per grid position, float64
    starts: list[int]  # cell id -> its first grid position (one extra entry: the pixel count)
    low: tuple[float, float]  # the embedding's minimum per axis
    width: tuple[float, float]  # cell size per axis
    shape: tuple[int, int]  # cells per axis

    def window(self, row: float, col: float, radius: float) -> np.ndarray | None:
        """Grid positions of the pixels in the cells within `radius` of (row, col) on both axes;
        None when those cells are more than half the grid (scanning everything is cheaper)."""
        r0, r1 = (_cell(v, self.low[0], self.width[0], self.shape[0]) for v in (row - radius, row + radius))
        c0, c1 = (_cell(v, self.low[1], self.width[1], self.shape[1]) for v in (col - radius, col + radius))
        if (r1 - r0 + 1) * (c1 - c0 + 1) * 2 > self.shape[0] * self.shape[1]:
            return None
        first = [r * self.shape[1] for r in range(r0, r1 + 1)]
        spans = [(self.starts[f + c0], self.starts[f + c1 + 1]) for f in first]
        return np.concatenate([np.arange(a, b) for a, b in spans])


def _cell(value: float, low: float, width: float, count: int) -> int:
    """Cell index of one embedding value, computed as `_cells` does (so the two always agree)."""
    return min(max(math.floor((value - low) / width), 0), count - 1)


def _cells(values: np.ndarray, low: float, width: float, count: int) -> np.ndarray:
    """Cell index of embedding values along one axis: monotone in them, clipped to the grid."""
    return np.clip(np.floor((values - low) / width), 0, count - 1).astype(np.int64)


def _grid_shape(extent: np.ndarray, cell: float) -> tuple[int, int]:
    """Cells per axis for cells about `cell` wide, at most MAX_CELLS in all."""
    counts = np.maximum(np.ceil(extent / cell), 1.0)
    if counts.prod() > MAX_CELLS:  # coarser cells, same aspect; then no axis past what is left
        counts = np.maximum(np.floor(counts * math.sqrt(MAX_CELLS / counts.prod())), 1.0)
    rows = int(min(counts[0], MAX_CELLS))
    return rows, int(min(counts[1], MAX_CELLS // rows))


def _radius(bandwidth: np.ndarray) -> np.ndarray:
    """Half-width per pixel of the box holding its proposal: sqrt(ln 2 / min_a s_a), with slack."""
    return np.sqrt(LN2 / np.minimum(bandwidth[0], bandwidth[1])) * (1.0 + RADIUS_SLACK)


def _descending(values: np.ndarray) -> np.ndarray:
    """Stable argsort of finite float32 `values`, largest first (ties keep their order), in O(N):
    numpy radix-sorts 16-bit keys, so two stable passes over the halves of an order-preserving
    32-bit key sort them 3-4x faster than a stable float argsort."""
    bits = (values + np.float32(0)).view(np.uint32)  # + 0: -0.0 becomes 0.0
    key = np.where(bits >> 31, bits, ~bits & np.uint32(0x7FFFFFFF))  # larger value -> smaller key
    order = np.argsort((key & np.uint32(0xFFFF)).astype(np.uint16), kind="stable")
    return order[np.argsort((key[order] >> 16).astype(np.uint16), kind="stable")]


def _build_grid(centres: np.ndarray, cell: float) -> _Grid:
    """Grid over the 2 x N embeddings with cells about `cell` wide (the seeds' typical radius:
    a window then spans about 3 x 3 cells)."""
    low = np.array([centres[0].min(), centres[1].min()])  # per row: axis=1 reductions were slower
    extent = np.array([centres[0].max(), centres[1].max()]) - low
    shape = _grid_shape(extent, cell)
    width = np.where(extent > 0, extent / np.array(shape), 1.0)
    ids = (_cells(centres[0], low[0], width[0], shape[0]) * shape[1]
           + _cells(centres[1], low[1], width[1], shape[1])).astype(np.uint16)
    order = np.argsort(ids, kind="stable")  # 16-bit keys: a radix sort
    starts = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=shape[0] * shape[1]))])
    return _Grid(order, centres[0, order], centres[1, order], starts.tolist(), (float(low[0]), float(low[1])),
                 (float(width[0]), float(width[1])), shape)


def _walk(grid: _Grid, seeds: np.ndarray, bandwidth: np.ndarray, radii: np.ndarray, min_pixels: int) -> np.ndarray:
    """Instance id per grid position (0: none) from the seeds (grid positions, best first, with
    their 2 x M bandwidths and radii)."""
    n = len(grid.order)
    labels = np.zeros(n, dtype=np.int32)
    unclustered = np.ones(n, dtype=bool)
    rank = np.full(n, len(seeds), dtype=np.int64)  # grid position -> rank among the seeds; others: a spare slot
    rank[seeds] = np.arange(len(seeds))
    open_seed = np.ones(len(seeds) + 1, dtype=bool)
    everything = np.arange(n)
    count, at = 0, 0
    while at < len(seeds):
        at += int(open_seed[at:-1].argmax())  # the next seed still unclustered (bool argmax stops early)
        if not open_seed[at]:
            break
        seed = seeds[at]
        row, col = float(grid.rows[seed]), float(grid.cols[seed])
        near = grid.window(row, col, float(radii[at]))
        near = everything if near is None else near
        q = bandwidth[0, at] * (grid.rows[near] - row) ** 2 + bandwidth[1, at] * (grid.cols[near] - col) ** 2
        proposal = near[q < LN2]  # holds the seed itself (q = 0)
        fresh = proposal[unclustered[proposal]]
        if len(proposal) > min_pixels and 2 * len(fresh) > len(proposal):
            count += 1
            labels[fresh] = count
        unclustered[proposal] = False
        open_seed[rank[proposal]] = False
    return labels


def seed_labels(embedding: np.ndarray, foreground: np.ndarray, *, threshold: float = 0.5,
                min_size: int = 0) -> np.ndarray:
    """H x W int32 instance map (0: background or unassigned; ids 1, 2, ... in the order found)
    of the `foreground` pixels clustered around seeds scoring at least `threshold`."""
    _check_layout(embedding, foreground)
    embedding = np.asarray(embedding, dtype=np.float32)  # what the scores and the seed order are computed from
    check_finite(embedding)
    height, width = foreground.shape
    labels = np.zeros(height * width, dtype=np.int32)
    pixels = np.flatnonzero(foreground)
    values = embedding.reshape(len(embedding), -1)[:, pixels]
    candidates = np.flatnonzero(expit(values[-1]) >= threshold)
    if len(candidates) == 0:
        return labels.reshape(height, width)
    candidates = candidates[_descending(values[-1, candidates])]  # ties: raster order
    bandwidth = _bandwidths(values[2:-1, candidates])
    radii = _radius(bandwidth)
    cell = float(np.median(radii[:: max(1, len(radii) // RADIUS_SAMPLE)]))
    grid = _build_grid(values[:2].astype(np.float64), cell)
    position = np.empty_like(grid.order)
    position[grid.order] = np.arange(len(grid.order))
    found = _walk(grid, position[candidates], bandwidth, radii, max(int(min_size), 1))
    labels[pixels[grid.order]] = found
    return labels.reshape(height, width)
