"""Cost of scoring one label-map pair, side by side: `score_image` (one contingency table,
`metrics.scores.Overlap`) against the previous scorer, which built the table twice (Dice, IoU)
and sorted the maps with `np.unique` six times. Both run in this process on the same maps, and
their figures are checked to agree.

    python bench/score_image.py                       # 1024 x 1024, 300 instances per map
    python bench/score_image.py --size 2048 --instances 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
from scipy import ndimage

from instseg.metrics.scores import AP_THRESHOLDS, IGNORE, ImageScores, score_image


def nuclei_map(size: int, instances: int, seed: int) -> np.ndarray:
    """`instances` blobs of radius ~25 px around random centres (a crowded nuclei image)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    seeds[tuple(rng.integers(0, size, (2, instances)))] = np.arange(1, instances + 1)
    distance, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[rows, cols]
    labels[distance > 25] = 0
    return labels.astype(np.uint16)


def previous_score_image(pred: np.ndarray, gt: np.ndarray) -> ImageScores:
    """The scorer before `Overlap`: a dense table for Dice and another for IoU, each from
    `np.unique` of both maps, and `np.unique` again for the counts."""
    def table(a, b):
        a_ids, a_inv = np.unique(a.ravel(), return_inverse=True)
        b_ids, b_inv = np.unique(b.ravel(), return_inverse=True)
        t = np.bincount(a_inv * len(b_ids) + b_inv, minlength=len(a_ids) * len(b_ids)).reshape(len(a_ids), -1)
        t = t.astype(np.float64)
        sizes = t.sum(1)[:, None], t.sum(0)[None, :]
        return t[np.ix_(a_ids != 0, b_ids != 0)], sizes[0][a_ids != 0], sizes[1][:, b_ids != 0]

    ignored = gt == IGNORE
    pred, gt = np.where(ignored, 0, pred), np.where(ignored, 0, gt)
    inter, p_size, g_size = table(pred, gt)
    m = 2 * inter / (p_size + g_size)
    sbd = float(min(m.max(1).mean(), m.max(0).mean())) if m.size else 0.0
    fg = 2 * np.logical_and(pred > 0, gt > 0).sum() / ((pred > 0).sum() + (gt > 0).sum())
    n_pred, n_gt = int((np.unique(pred) > 0).sum()), int((np.unique(gt) > 0).sum())
    inter, p_size, g_size = table(pred, gt)
    iou = inter / (p_size + g_size - inter)
    tp = np.array([(iou > t).sum() for t in AP_THRESHOLDS])
    ap = tp / (n_pred + n_gt - tp)
    return ImageScores(sbd, float(fg), n_pred - n_gt, abs(n_pred - n_gt), float(ap.mean()), float(ap[0]),
                       tp[0] / n_pred, tp[0] / n_gt)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pred, gt = nuclei_map(args.size, args.instances, 1), nuclei_map(args.size, args.instances, 2)
    new, old = score_image(pred, gt), previous_score_image(pred, gt)
    assert np.allclose(list(new.as_dict().values()), list(old.as_dict().values())), (new, old)
    before = best_ms(lambda: previous_score_image(pred, gt), args.repeats)
    after = best_ms(lambda: score_image(pred, gt), args.repeats)
    print(f"| {args.size} x {args.size}, {args.instances} ids | ms per pair | ratio |")
    print("|---|---|---|")
    print(f"| previous (two tables, np.unique x6) | {before:.1f} | 1.00 |")
    print(f"| score_image (one table, Overlap) | {after:.1f} | {before / after:.1f}x faster |")


if __name__ == "__main__":
    main()
