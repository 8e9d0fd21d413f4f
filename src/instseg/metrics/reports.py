"""Scores of many images: per-image rows, their summary, the counter head's own count, and the
report files (`metrics.json`, `per_image.csv`, worst image first) that `instseg evaluate` writes.

`score_folders` scores any tool's label maps (PNG or TIFF) against ground truth, matched by name; a model's
predictions become rows through `instseg.predict.evaluation`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from instseg.errors import ConfigError, DataError
from instseg.io.atomic import atomic_write_text
from instseg.io.images import read_label_map
from instseg.io.inputs import label_files
from instseg.metrics.scores import METRIC_LABELS, ImageScores, count_instances, score_image, summarize


@dataclass(frozen=True)
class ImageRow:
    name: str
    scores: ImageScores
    gt_instances: int
    head_count: float | None = None  # the counter head's estimate, in instances

    @property
    def pred_instances(self) -> int:
        return self.gt_instances + self.scores.dic


@dataclass
class Report:
    """Rows of one evaluation and where they came from (`source` goes into metrics.json)."""

    title: str
    rows: list[ImageRow]
    source: dict[str, Any] = field(default_factory=dict)
    coco: dict[str, Any] | None = None  # COCO mask AP (`io.coco_results.coco_ap`) when scores exist

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        return summarize(row.scores for row in self.rows)

    @property
    def counter_head(self) -> dict[str, dict[str, float]] | None:
        return counter_head_summary(self.rows)

    @property
    def worst(self) -> ImageRow:
        return min(self.rows, key=_worst_first)

    def __str__(self) -> str:
        """One line: the title and the headline metrics (mean ± std)."""
        summary = self.summary
        shown = ", ".join(f"{METRIC_LABELS[k]} {summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}"
                          for k in ("sbd", "fg_dice", "abs_dic", "ap"))
        return f"{self.title}: {shown}"

    def as_dict(self) -> dict[str, Any]:
        report = {**self.source, "images": len(self.rows), "metrics": self.summary}
        if self.counter_head is not None:
            report["counter_head"] = self.counter_head
        if self.coco is not None:
            report["coco"] = self.coco
        return report


def _worst_first(row: ImageRow) -> tuple[float, float, str]:
    return row.scores.sbd, row.scores.fg_dice, row.name


def score_folders(pred: Path, gt: Path, pred_suffix: str | None = None,
                  gt_suffix: str | None = None) -> tuple[Report, dict[str, list[str]]]:
    """Every predicted label map (PNG or TIFF) against the ground truth of the same match key,
    each side's `suffix` taken off its stems first (`inputs.label_files`); also the file names
    without a partner on each side ({"pred": [...], "gt": [...]})."""
    predicted, truth = label_files(pred, pred_suffix), label_files(gt, gt_suffix)
    matched = sorted(predicted.keys() & truth.keys())
    unmatched = {"pred": sorted(predicted[k].name for k in predicted.keys() - truth.keys()),
                 "gt": sorted(truth[k].name for k in truth.keys() - predicted.keys())}
    if not matched:
        raise DataError(f"{pred}: no prediction matches a ground-truth file in {gt} by name (e.g. "
                        "plant001_label.png <-> plant001_label.png or plant001_rgb_label.png; another tool's "
                        "names: --pred-suffix _cp_masks matches x_cp_masks.png to x.png)")
    rows = []
    for key in matched:
        p, g = read_label_map(predicted[key]), read_label_map(truth[key])
        if p.shape != g.shape:
            raise DataError(f"{predicted[key]}: prediction is {p.shape[1]}x{p.shape[0]} but "
                            f"{truth[key]} is {g.shape[1]}x{g.shape[0]}")
        rows.append(ImageRow(key, score_image(p, g), count_instances(g)))
    source = {"pred": str(pred), "gt": str(gt), "pred_suffix": pred_suffix, "gt_suffix": gt_suffix,
              "unmatched": unmatched}
    return Report(f"{pred} against {gt} ({len(rows)} images)", rows, source), unmatched


def _mean_std(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / n)}


def counter_head_summary(rows: Iterable[ImageRow]) -> dict[str, dict[str, float]] | None:
    """The counter head's own count against the ground truth (None without a model)."""
    heads = [row for row in rows if row.head_count is not None]
    if not heads:
        return None
    dic = [float(round(row.head_count) - row.gt_instances) for row in heads]
    return {"count": _mean_std([row.head_count for row in heads]), "dic": _mean_std(dic),
            "abs_dic": _mean_std([abs(d) for d in dic])}


def per_image_csv(rows: Iterable[ImageRow]) -> str:
    """One line per image, worst first (lowest SBD, then lowest FG Dice, then name)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "sbd", "fg_dice", "dic", "abs_dic", "ap", "ap50", "precision50", "recall50",
                     "pred_instances", "gt_instances", "head_count"])
    for row in sorted(rows, key=_worst_first):
        s = row.scores
        writer.writerow([row.name, f"{s.sbd:.6f}", f"{s.fg_dice:.6f}", s.dic, s.abs_dic, f"{s.ap:.6f}",
                         f"{s.ap50:.6f}", f"{s.precision50:.6f}", f"{s.recall50:.6f}", row.pred_instances,
                         row.gt_instances, "" if row.head_count is None else f"{row.head_count:.3f}"])
    return buffer.getvalue()


def write_report(report: Report, target: Path) -> list[Path]:
    """`metrics.json` and `per_image.csv` in `target`, each written atomically."""
    paths = [target / "metrics.json", target / "per_image.csv"]
    try:
        atomic_write_text(paths[0], json.dumps(report.as_dict(), indent=2))
        atomic_write_text(paths[1], per_image_csv(report.rows))
    except OSError as exc:
        raise ConfigError(f"--out {target}: cannot write there ({exc.strerror or exc})") from exc
    return paths
