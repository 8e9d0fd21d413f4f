"""`instseg evaluate`: score a trained model, or any tool's label PNGs, with the CVPPP metrics.

Writes `metrics.json` (means and standard deviations) and `per_image.csv` (worst SBD
first). DiC counts the instances of the label maps; a model's counter head is scored
separately, as "counter-head DiC" (its rounded estimate minus the ground-truth count).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out
from instseg.cli.options import Bandwidth, Cluster, FillHoles, MinSize, cluster_params
from instseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from instseg.core.metrics import ImageScores

METRIC_LABELS = (("sbd", "SBD"), ("fg_dice", "FG Dice"), ("dic", "DiC"), ("abs_dic", "|DiC|"))


@dataclass(frozen=True)
class ImageRow:
    name: str
    scores: ImageScores
    gt_instances: int
    head_count: float | None = None  # the counter head's estimate, in instances

    @property
    def pred_instances(self) -> int:
        return self.gt_instances + self.scores.dic


def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="A run directory (uses best.pt) or a checkpoint file; or use --pred and --gt.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Dataset spec (default: the run's own).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image size (default: the run's).")] = None,
    val_size: Annotated[Optional[int], typer.Option(help="Synthetic validation images (default: the run's).")] = None,
    val_list: Annotated[Optional[Path], typer.Option(help="Dataset folders: stems to score (default: the run's "
                                                          "validation split).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    pred: Annotated[Optional[Path], typer.Option(help="Folder of predicted label PNGs (any tool's).")] = None,
    gt: Annotated[Optional[Path], typer.Option(help="Folder of ground-truth label PNGs, matched to --pred by name.")] = None,
    cluster: Cluster = None,
    min_size: MinSize = None,
    fill_holes: FillHoles = None,
    bandwidth: Bandwidth = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Where metrics.json and per_image.csv go (default: <run>/eval or <pred>/eval).")] = None,
) -> None:
    """Print SBD / FG Dice / DiC / |DiC| (mean ± std); write metrics.json and per_image.csv."""
    if (pred is None) != (gt is None):
        raise ConfigError("--pred and --gt go together: give both folders")
    if pred is not None and checkpoint is not None:
        raise ConfigError("give either a run directory / checkpoint or --pred and --gt, not both")
    if pred is None and checkpoint is None:
        raise ConfigError("nothing to evaluate: give a run directory or checkpoint, or --pred DIR --gt DIR")
    if pred is not None:
        title, source, rows = _score_folders(pred, gt)
        target = out_dir or pred / "eval"
    else:
        title, source, rows = _score_model(checkpoint, data, image_size, val_size, val_list, batch_size, device,
                                           (cluster, min_size, fill_holes, bandwidth))
        target = out_dir or Path(source["checkpoint"]).parent / "eval"
    _report(title, source, rows, target)


def _score_folders(pred: Path, gt: Path) -> tuple[str, dict[str, Any], list[ImageRow]]:
    from instseg.core.metrics import count_instances, score_image
    from instseg.imageio import read_label_map
    from instseg.pipeline import label_files

    predicted, truth = label_files(pred), label_files(gt)
    matched = sorted(predicted.keys() & truth.keys())
    unmatched = {"pred": sorted(predicted[k].name for k in predicted.keys() - truth.keys()),
                 "gt": sorted(truth[k].name for k in truth.keys() - predicted.keys())}
    if not matched:
        raise DataError(f"{pred}: no prediction matches a ground-truth file in {gt} by name "
                        f"(e.g. plant001_label.png <-> plant001_label.png or plant001_rgb_label.png)")
    for side, names in unmatched.items():
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            err.print(f"warning: {len(names)} {side} file(s) without a partner: {escape(shown)}", highlight=False, soft_wrap=True)
    rows = []
    for key in matched:
        p, g = read_label_map(predicted[key]), read_label_map(truth[key])
        if p.shape != g.shape:
            raise DataError(f"{predicted[key]}: prediction is {p.shape[1]}x{p.shape[0]} but "
                            f"{truth[key]} is {g.shape[1]}x{g.shape[0]}")
        rows.append(ImageRow(key, score_image(p, g), count_instances(g)))
    source = {"pred": str(pred), "gt": str(gt), "unmatched": unmatched}
    return f"{pred} against {gt} ({len(rows)} images)", source, rows


def _score_model(checkpoint: Path, data: str | None, image_size: int | None, val_size: int | None,
                 val_list: Path | None, batch_size: int, device: str, cluster_options: tuple) -> tuple[str, dict[str, Any], list[ImageRow]]:
    from instseg.core.checkpoint import build_model, load_checkpoint
    from instseg.core.clustering import ClusterParams
    from instseg.core.data import build_datasets
    from instseg.core.device import resolve_device
    from instseg.core.evaluation import evaluate_dataset

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    choice = resolve_device(device)
    model = build_model(ckpt).to(choice.device)
    spec = data or cfg["data"]
    size = image_size or cfg["image_size"]
    params = cluster_params(ClusterParams.from_config(cfg), *cluster_options)
    _, val_set = build_datasets(spec, image_size=size, seed=cfg["seed"], train_size=1,
                                val_size=val_size or cfg["val_size"], val_split=cfg.get("val_split", 0.2),
                                val_list=str(val_list) if val_list else cfg.get("val_list"), augment=False,
                                max_instances=ckpt["model"]["max_instances"])
    err.print(f"evaluating {escape(ckpt['path'])} (epoch {ckpt['epoch']}) on {escape(spec)} ({len(val_set)} images, "
              f"{size}px) on {choice.describe()}; {params.method} clustering", highlight=False, soft_wrap=True)
    result = evaluate_dataset(model, val_set, choice.device, batch_size=batch_size, params=params, image_size=size)
    rows = [ImageRow(name, scores, gt_count, head)
            for name, scores, gt_count, head in zip(result.names, result.scores, result.gt_counts, result.head_counts)]
    source = {"checkpoint": ckpt["path"], "epoch": ckpt["epoch"], "data": spec, "image_size": size,
              "cluster": asdict(params)}
    return f"{ckpt['model']['name']} on {spec} ({len(rows)} images)", source, rows


def _mean_std(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / n)}


def counter_head_summary(rows: list[ImageRow]) -> dict[str, dict[str, float]] | None:
    """The counter head's own count against the ground truth (None without a model)."""
    heads = [row for row in rows if row.head_count is not None]
    if not heads:
        return None
    dic = [float(round(row.head_count) - row.gt_instances) for row in heads]
    return {"count": _mean_std([row.head_count for row in heads]), "dic": _mean_std(dic),
            "abs_dic": _mean_std([abs(d) for d in dic])}


def per_image_csv(rows: list[ImageRow]) -> str:
    """One line per image, worst first (lowest SBD, then lowest FG Dice, then name)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "sbd", "fg_dice", "dic", "abs_dic", "pred_instances", "gt_instances", "head_count"])
    for row in sorted(rows, key=lambda r: (r.scores.sbd, r.scores.fg_dice, r.name)):
        s = row.scores
        writer.writerow([row.name, f"{s.sbd:.6f}", f"{s.fg_dice:.6f}", s.dic, s.abs_dic, row.pred_instances,
                         row.gt_instances, "" if row.head_count is None else f"{row.head_count:.3f}"])
    return buffer.getvalue()


def _report(title: str, source: dict[str, Any], rows: list[ImageRow], target: Path) -> None:
    from instseg.atomic import atomic_write_text
    from instseg.core.metrics import summarize

    summary = summarize(row.scores for row in rows)
    head = counter_head_summary(rows)
    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for key, label in METRIC_LABELS:
        table.add_row(label, fmt_mean_std(summary, key), end_section=key == "abs_dic" and head is not None)
    if head is not None:
        table.add_row("counter-head count", fmt_mean_std(head, "count"))
        table.add_row("counter-head DiC", fmt_mean_std(head, "dic"))
        table.add_row("counter-head |DiC|", fmt_mean_std(head, "abs_dic"))
    out.print(table)
    worst = min(rows, key=lambda r: (r.scores.sbd, r.scores.fg_dice, r.name))
    out.print(f"worst image: {escape(worst.name)} (SBD {worst.scores.sbd:.3f})", highlight=False, soft_wrap=True)

    report = {**source, "images": len(rows), "metrics": summary}
    if head is not None:
        report["counter_head"] = head
    try:
        atomic_write_text(target / "metrics.json", json.dumps(report, indent=2))
        atomic_write_text(target / "per_image.csv", per_image_csv(rows))
    except OSError as exc:
        raise ConfigError(f"--out {target}: cannot write there ({exc.strerror or exc})") from exc
    out.print(f"wrote {escape(str(target / 'metrics.json'))} and per_image.csv", highlight=False, soft_wrap=True)
