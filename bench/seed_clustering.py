"""Seed clustering (spatial embeddings, Neven et al. 2019): speed and quality on crowded scenes.

    python bench/seed_clustering.py [--repeats 5] [--seed 0]

Synthetic nuclei: non-overlapping discs of radius 8-12 px, about a fifth of them placed touching
another, on 512 x 512 (100 and 300 discs) and 1024 x 1024 (1000). The outputs are what a good
network gives: every pixel's embedding at its disc's centroid plus Gaussian noise (1 px per
axis), a bandwidth putting phi = 0.5 at the disc's radius (plus noise on sigma), seed logits
highest at the centre (plus noise). `seed_labels` clusters the ground-truth foreground on one
thread (threadpoolctl); the table gives the median ms of `--repeats` runs after one warm-up, the
instances found and the F1 at IoU 0.5 against the truth (instseg.metrics.scores), and the last
line checks the aim: 300 nuclei on 512 x 512 in <= 30 ms.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from instseg.instances.seeds import LN2, SIGMA_SCALE, seed_labels
from instseg.metrics.scores import average_precision

SCENES = ((100, 512), (300, 512), (1000, 1024))  # (discs, image side)
RADII = (8.0, 12.0)
TOUCHING = 0.2  # fraction of discs placed against an earlier one
SCALE = 32.0  # pixels per embedding unit (the model's position_scale)
OFFSET_NOISE, SIGMA_NOISE, LOGIT_NOISE = 1.0, 0.01, 1.0  # px; raw sigma; logit
AIM_MS, AIM_SCENE = 30.0, (300, 512)


def place_discs(count: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """count x 3 (row, col, radius) of discs that do not overlap, some touching an earlier one."""
    discs: list[tuple[float, float, float]] = []
    while len(discs) < count:
        radius = rng.uniform(*RADII)
        if discs and rng.random() < TOUCHING:
            row, col, other = discs[rng.integers(len(discs))]
            angle = rng.uniform(0, 2 * math.pi)
            row, col = row + (other + radius + 1) * math.sin(angle), col + (other + radius + 1) * math.cos(angle)
        else:
            row, col = rng.uniform(radius, side - radius, size=2)
        placed = np.array(discs).reshape(-1, 3)
        inside = radius <= row <= side - radius and radius <= col <= side - radius
        apart = np.hypot(placed[:, 0] - row, placed[:, 1] - col) >= placed[:, 2] + radius + 0.5
        if inside and apart.all():
            discs.append((row, col, radius))
    return np.array(discs)


def render(discs: np.ndarray, side: int) -> np.ndarray:
    """side x side int32 label map, disc i labelled i + 1."""
    labels = np.zeros((side, side), dtype=np.int32)
    for index, (row, col, radius) in enumerate(discs):
        r0, r1 = int(row - radius), min(int(row + radius) + 2, side)
        c0, c1 = int(col - radius), min(int(col + radius) + 2, side)
        rr, cc = np.ogrid[r0:r1, c0:c1]
        labels[r0:r1, c0:c1][(rr - row) ** 2 + (cc - col) ** 2 <= radius ** 2] = index + 1
    return labels


def network_outputs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """4 x H x W embedding (n_sigma = 1) of a good network for `labels`, with noise."""
    count = int(labels.max())
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    area = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    area[0] = 1.0
    centre_row = np.bincount(labels.ravel(), rows.ravel(), count + 1) / area
    centre_col = np.bincount(labels.ravel(), cols.ravel(), count + 1) / area
    radius = np.sqrt(area / math.pi)
    sigma = np.log(LN2 * (SCALE / radius) ** 2) / SIGMA_SCALE
    distance = np.hypot(rows - centre_row[labels], cols - centre_col[labels]) / radius[labels]
    noise = rng.normal(size=(4,) + labels.shape)
    embedding = np.stack([
        (centre_row[labels] + OFFSET_NOISE * noise[0]) / SCALE,
        (centre_col[labels] + OFFSET_NOISE * noise[1]) / SCALE,
        sigma[labels] + SIGMA_NOISE * noise[2],
        np.where(labels > 0, 6.0 - 8.0 * distance ** 2, -6.0) + LOGIT_NOISE * noise[3],
    ])
    return embedding.astype(np.float32)



def f1_at_half(pred: np.ndarray, gt: np.ndarray) -> float:
    precision = average_precision(pred, gt, (0.5,))
    p, r = precision.precision50, precision.recall50
    return 2 * p * r / (p + r) if p + r else 0.0


def time_ms(embedding: np.ndarray, foreground: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """(median ms of `repeats` runs after a warm-up, the labels)."""
    labels = seed_labels(embedding, foreground)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        seed_labels(embedding, foreground)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threadpool_limits(1)
    rng = np.random.default_rng(args.seed)
    table = Table(title=f"seed_labels: median of {args.repeats} runs after 1 warm-up, 1 thread")
    for column in ("nuclei", "size", "foreground", "ms / image", "instances found", "F1 @ IoU 0.5"):
        table.add_column(column, justify="right")
    results = {}
    for count, side in SCENES:
        gt = render(place_discs(count, side, rng), side)
        embedding, foreground = network_outputs(gt, rng), gt > 0
        ms, labels = time_ms(embedding, foreground, args.repeats)
        results[count, side] = ms
        table.add_row(str(count), f"{side}x{side}", f"{foreground.mean():.0%}", f"{ms:.1f}",
                      str(len(np.unique(labels[labels > 0]))), f"{f1_at_half(labels, gt):.4f}")
    console = Console()
    console.print(table)
    ms = results[AIM_SCENE]
    console.print(f"{AIM_SCENE[0]} nuclei, {AIM_SCENE[1]}x{AIM_SCENE[1]}: {ms:.1f} ms -> "
                  f"{'meets' if ms <= AIM_MS else 'misses'} the aim (<= {AIM_MS:.0f} ms on one core)", highlight=False)


if __name__ == "__main__":
    main()
