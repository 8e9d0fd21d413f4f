"""CVPPP leaf-segmentation metrics (numpy only; the ONNX path uses them too).

Dice(a, b)       = 2 |a n b| / (|a| + |b|)
BestDice(A, B)   = mean over labels a in A of max over b in B of Dice(a, b)
SBD              = min(BestDice(pred, gt), BestDice(gt, pred))
FG Dice          = Dice of the foregrounds (label > 0)
DiC              = #pred - #gt, counting distinct non-zero labels; |DiC| its absolute value

and, for crowded scenes, the 2018 Data Science Bowl's average precision: at each IoU threshold
t in 0.5, 0.55, ..., 0.95 a predicted and a true instance match when their IoU exceeds t (above
0.5 a match is necessarily one-to-one), and the image scores TP / (TP + FP + FN); AP is the mean
over thresholds, AP@0.5 the score at 0.5, with precision TP / (TP + FP) and recall TP / (TP + FN)
at 0.5. An image with no true and no predicted instance scores 1 (nothing to find, nothing
false); precision is 1 with nothing predicted, recall 1 with nothing to find.

As in the official CVPPP evaluation, a label map with no instances gives BestDice 0 (so an empty
prediction scores SBD 0), and Dice of two empty masks is 0. Labels need not be contiguous.
Ground-truth pixels labelled IGNORE (COCO crowd regions) are left out of every metric: they
count as background in both maps.
All pairwise overlaps come from one contingency table, so the cost is O(H*W + P*G).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

AP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
IGNORE = -1  # ground-truth label of pixels left out of the loss and the metrics (COCO crowd regions)


@dataclass(frozen=True)
class ImageScores:
    sbd: float
    fg_dice: float
    dic: int
    abs_dic: int
    ap: float = math.nan  # mean over AP_THRESHOLDS of TP / (TP + FP + FN)
    ap50: float = math.nan
    precision50: float = math.nan
    recall50: float = math.nan

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


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P x G intersections, P sizes, G sizes) of the non-zero labels, from one contingency table."""
    _check_pair(pred, gt)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    g_ids, g_inv = np.unique(gt.ravel(), return_inverse=True)
    inter = np.bincount(p_inv * len(g_ids) + g_inv, minlength=len(p_ids) * len(g_ids))
    inter = inter.reshape(len(p_ids), len(g_ids)).astype(np.float64)
    p_size, g_size = inter.sum(axis=1), inter.sum(axis=0)
    p_fg, g_fg = p_ids != 0, g_ids != 0
    return inter[np.ix_(p_fg, g_fg)], p_size[p_fg], g_size[g_fg]


def dice_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """P x G Dice between every non-zero predicted label and every non-zero GT label."""
    inter, p_size, g_size = _overlaps(pred, gt)
    return 2.0 * inter / (p_size[:, None] + g_size[None, :])


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """P x G intersection over union between the non-zero labels."""
    inter, p_size, g_size = _overlaps(pred, gt)
    return inter / (p_size[:, None] + g_size[None, :] - inter)


@dataclass(frozen=True)
class Precision:
    """Average precision at IoU thresholds (module docstring) of one image."""

    ap: float
    ap50: float
    precision50: float
    recall50: float


def average_precision(pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS) -> Precision:
    iou = iou_matrix(pred, gt)
    n_pred, n_gt = iou.shape
    if n_pred == 0 and n_gt == 0:
        return Precision(1.0, 1.0, 1.0, 1.0)
    scores, tp50 = [], 0
    for t in thresholds:
        tp = int((iou > t).sum())  # above 0.5 each instance matches at most one other
        scores.append(tp / (n_pred + n_gt - tp))
        if t == 0.5:
            tp50 = tp
    ap50 = scores[list(thresholds).index(0.5)] if 0.5 in thresholds else math.nan
    return Precision(float(np.mean(scores)), ap50, tp50 / n_pred if n_pred else 1.0, tp50 / n_gt if n_gt else 1.0)


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
    return int((ids > 0).sum())


def difference_in_count(pred: np.ndarray, gt: np.ndarray) -> int:
    return count_instances(pred) - count_instances(gt)


def score_image(pred: np.ndarray, gt: np.ndarray) -> ImageScores:
    """The four CVPPP metrics and the DSB2018 average precision of one label-map pair."""
    ignored = gt == IGNORE
    if ignored.any():
        pred, gt = np.where(ignored, 0, pred), np.where(ignored, 0, gt)
    dic = difference_in_count(pred, gt)
    ap = average_precision(pred, gt)
    return ImageScores(symmetric_best_dice(pred, gt), foreground_dice(pred, gt), dic, abs(dic),
                       ap.ap, ap.ap50, ap.precision50, ap.recall50)


METRIC_LABELS = {  # names -> table labels
    "sbd": "SBD", "fg_dice": "FG Dice", "dic": "DiC", "abs_dic": "|DiC|",
    "ap": "AP@[.5:.95]", "ap50": "AP@0.5", "precision50": "precision@0.5", "recall50": "recall@0.5",
}
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
