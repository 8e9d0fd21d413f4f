"""CVPPP leaf-segmentation metrics (numpy only; the ONNX path uses them too).

Dice(a, b)       = 2 |a n b| / (|a| + |b|)
BestDice(A, B)   = mean over labels a in A of max over b in B of Dice(a, b)
SBD              = min(BestDice(pred, gt), BestDice(gt, pred))
FG Dice          = Dice of the foregrounds (label > 0)
DiC              = #pred - #gt, counting distinct non-zero labels; |DiC| its absolute value

As in the official evaluation, a label map with no instances gives BestDice 0 (so an empty
prediction scores SBD 0), and Dice of two empty masks is 0. Labels need not be contiguous.
All pairwise overlaps come from one contingency table, so the cost is O(H*W + P*G).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class ImageScores:
    sbd: float
    fg_dice: float
    dic: int
    abs_dic: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 0 when both are empty (official convention)."""
    a, b = a.astype(bool), b.astype(bool)
    denom = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / denom if denom else 0.0


def dice_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """P x G Dice between every non-zero predicted label and every non-zero GT label."""
    _check_pair(pred, gt)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    g_ids, g_inv = np.unique(gt.ravel(), return_inverse=True)
    inter = np.bincount(p_inv * len(g_ids) + g_inv, minlength=len(p_ids) * len(g_ids))
    inter = inter.reshape(len(p_ids), len(g_ids)).astype(np.float64)
    p_size, g_size = inter.sum(axis=1), inter.sum(axis=0)
    p_fg, g_fg = p_ids != 0, g_ids != 0
    inter = inter[np.ix_(p_fg, g_fg)]
    return 2.0 * inter / (p_size[p_fg][:, None] + g_size[g_fg][None, :])


def best_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the labels of `a` of their best Dice with any label of `b`."""
    m = dice_matrix(a, b)
    return float(m.max(axis=1).mean()) if m.size else 0.0


def symmetric_best_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    m = dice_matrix(pred, gt)
    return float(min(m.max(axis=1).mean(), m.max(axis=0).mean())) if m.size else 0.0


def foreground_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    _check_pair(pred, gt)
    return dice(pred > 0, gt > 0)


def count_instances(labels: np.ndarray) -> int:
    ids = np.unique(labels)
    return int((ids != 0).sum())


def difference_in_count(pred: np.ndarray, gt: np.ndarray) -> int:
    return count_instances(pred) - count_instances(gt)


def score_image(pred: np.ndarray, gt: np.ndarray) -> ImageScores:
    """All four CVPPP metrics for one predicted / ground-truth label-map pair."""
    dic = difference_in_count(pred, gt)
    return ImageScores(symmetric_best_dice(pred, gt), foreground_dice(pred, gt), dic, abs(dic))


METRIC_LABELS = {"sbd": "SBD", "fg_dice": "FG Dice", "dic": "DiC", "abs_dic": "|DiC|"}  # names -> table labels
METRIC_NAMES = tuple(METRIC_LABELS)


def summarize(scores: Sequence[ImageScores] | Iterable[ImageScores]) -> dict[str, dict[str, float]]:
    """{metric: {"mean": m, "std": s}} over images (population std); NaN when there are none."""
    scores = list(scores)
    out = {}
    for name in METRIC_NAMES:
        values = np.array([getattr(s, name) for s in scores], dtype=np.float64)
        out[name] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std()) if len(values) else math.nan,
        }
    return out
