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
All pairwise overlaps come from one contingency table (`Overlap`), so the cost is O(H*W) in time and
memory, however many instances the maps hold.
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


LOOKUP_IDS = 2**22  # label ids below this are compacted with a lookup table (no sort)
DENSE_PAIRS = 2**24  # contingency tables up to this many cells are counted densely


def _small_ids(labels: np.ndarray) -> int | None:
    """The largest id when every id is a small non-negative integer (every map instseg writes)."""
    if not labels.size or not np.issubdtype(labels.dtype, np.integer):
        return None
    low, high = int(labels.min()), int(labels.max())
    return high if low >= 0 and high < LOOKUP_IDS else None


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each pixel's label in `ids`, the sorted distinct `ids`): a lookup table for
    small ids, `np.unique` otherwise."""
    flat = labels.ravel()
    if _small_ids(flat) is not None:
        present = np.bincount(flat) > 0
        return (np.cumsum(present) - 1)[flat], np.flatnonzero(present)
    ids, index = np.unique(flat, return_inverse=True)
    return index.ravel(), ids


def _cells(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray, np.ndarray]:
    """The non-zero cells of the contingency table: (pred ids, gt ids, pred sizes, gt sizes,
    then per cell its pred index, gt index and pixel count). Small ids index the table directly;
    otherwise the ids are compacted first, and a table too large to hold is counted by cell."""
    p_max, g_max = _small_ids(pred), _small_ids(gt)
    if p_max is not None and g_max is not None and (p_max + 1) * (g_max + 1) <= DENSE_PAIRS:
        p_index, g_index = pred.ravel(), gt.ravel()
        p_ids, g_ids = np.arange(p_max + 1), np.arange(g_max + 1)
    else:
        (p_index, p_ids), (g_index, g_ids) = _compact(pred), _compact(gt)
    n_p, n_g = len(p_ids), len(g_ids)
    codes = p_index.astype(np.int64) * n_g + g_index
    if n_p * n_g <= DENSE_PAIRS:
        table = np.bincount(codes, minlength=n_p * n_g).reshape(n_p, n_g)
        pi, gi = np.nonzero(table)
        return p_ids, g_ids, table.sum(axis=1), table.sum(axis=0), pi, gi, table[pi, gi]
    codes, pixels = np.unique(codes, return_counts=True)
    pi, gi = np.divmod(codes, n_g)
    return (p_ids, g_ids, np.bincount(p_index, minlength=n_p), np.bincount(g_index, minlength=n_g), pi, gi,
            pixels)


@dataclass(frozen=True)
class Overlap:
    """The contingency table of two label maps, kept as its non-zero cells between foreground
    labels: every metric here derives from it, so a pair of maps is counted once, in O(H*W)
    time and memory however many instances they hold (a dense P x G table would not be)."""

    pred_sizes: np.ndarray  # pixels of each non-zero predicted label
    gt_sizes: np.ndarray
    pred_index: np.ndarray  # per overlapping pair: the predicted label (index into pred_sizes) ...
    gt_index: np.ndarray  # ... the true label (index into gt_sizes) ...
    pixels: np.ndarray  # ... and the pixels they share

    @classmethod
    def of(cls, pred: np.ndarray, gt: np.ndarray) -> "Overlap":
        _check_pair(pred, gt)
        p_ids, g_ids, p_sizes, g_sizes, pi, gi, pixels = _cells(pred, gt)
        p_fg, g_fg = (p_ids != 0) & (p_sizes > 0), (g_ids != 0) & (g_sizes > 0)
        both = p_fg[pi] & g_fg[gi]
        renumber = lambda fg: np.cumsum(fg) - 1  # noqa: E731 - index among the foreground labels
        return cls(p_sizes[p_fg].astype(np.float64), g_sizes[g_fg].astype(np.float64),
                   renumber(p_fg)[pi[both]], renumber(g_fg)[gi[both]], pixels[both].astype(np.float64))

    @property
    def counts(self) -> tuple[int, int]:
        return len(self.pred_sizes), len(self.gt_sizes)

    def pair_dice(self) -> np.ndarray:
        return 2.0 * self.pixels / (self.pred_sizes[self.pred_index] + self.gt_sizes[self.gt_index])

    def pair_iou(self) -> np.ndarray:
        union = self.pred_sizes[self.pred_index] + self.gt_sizes[self.gt_index] - self.pixels
        return self.pixels / union

    def best_dice(self) -> tuple[float, float]:
        """(BestDice(pred, gt), BestDice(gt, pred)); 0 where a side has no instance."""
        n_p, n_g = self.counts
        if not n_p or not n_g:
            return 0.0, 0.0
        pair = self.pair_dice()
        best_p, best_g = np.zeros(n_p), np.zeros(n_g)
        np.maximum.at(best_p, self.pred_index, pair)
        np.maximum.at(best_g, self.gt_index, pair)
        return float(best_p.mean()), float(best_g.mean())

    def foreground_dice(self) -> float:
        denom = self.pred_sizes.sum() + self.gt_sizes.sum()
        return float(2.0 * self.pixels.sum() / denom) if denom else 0.0

    def average_precision(self, thresholds: Sequence[float] = AP_THRESHOLDS) -> "Precision":
        n_pred, n_gt = self.counts
        if n_pred == 0 and n_gt == 0:
            return Precision(1.0, 1.0, 1.0, 1.0)
        iou = self.pair_iou()
        scores, tp50 = [], 0
        for t in thresholds:
            tp = int((iou > t).sum())  # above 0.5 each instance matches at most one other
            scores.append(tp / (n_pred + n_gt - tp))
            if t == 0.5:
                tp50 = tp
        ap50 = scores[list(thresholds).index(0.5)] if 0.5 in thresholds else math.nan
        return Precision(float(np.mean(scores)), ap50, tp50 / n_pred if n_pred else 1.0,
                         tp50 / n_gt if n_gt else 1.0)


@dataclass(frozen=True)
class Precision:
    """Average precision at IoU thresholds (module docstring) of one image."""

    ap: float
    ap50: float
    precision50: float
    recall50: float


def average_precision(pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS) -> Precision:
    return Overlap.of(pred, gt).average_precision(thresholds)


def best_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the labels of `a` of their best Dice with any label of `b`."""
    return Overlap.of(a, b).best_dice()[0]


def symmetric_best_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return min(Overlap.of(pred, gt).best_dice())


def foreground_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    _check_pair(pred, gt)
    return dice(pred > 0, gt > 0)


def count_instances(labels: np.ndarray) -> int:
    return int((_compact(labels)[1] > 0).sum())


def difference_in_count(pred: np.ndarray, gt: np.ndarray) -> int:
    return count_instances(pred) - count_instances(gt)


def score_image(pred: np.ndarray, gt: np.ndarray) -> ImageScores:
    """The four CVPPP metrics and the DSB2018 average precision of one label-map pair, all from
    one contingency table (`Overlap`)."""
    _check_pair(pred, gt)
    ignored = gt == IGNORE
    if ignored.any():
        pred, gt = np.where(ignored, 0, pred), np.where(ignored, 0, gt)
    overlap = Overlap.of(pred, gt)
    n_pred, n_gt = overlap.counts
    ap = overlap.average_precision()
    return ImageScores(min(overlap.best_dice()), overlap.foreground_dice(), n_pred - n_gt, abs(n_pred - n_gt),
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
