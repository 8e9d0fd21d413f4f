"""`instseg evaluate`: score a trained model (checkpoint or ONNX file), any tool's label maps, or
a COCO results file, with the CVPPP metrics, the DSB2018 AP and (where instances have scores)
COCO mask AP. Parse, call `instseg.load(MODEL).evaluate`, `metrics.reports.score_folders` or
`io.coco_results.score_coco_files`, print; the report files are `scoring.write_report`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out, shown
from instseg.cli.options import (Bandwidth, Cluster, Device, FillHoles, MinSize, ObjectSize, SeedThreshold, Tile,
                                 TileOverlap, check_batch_size, plain)
from instseg import limits
from instseg.instances.size import parse_object_size
from instseg.errors import ConfigError

if TYPE_CHECKING:
    from instseg.metrics.reports import Report
    from instseg.predict.evaluation import EvalData


def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="A run directory (uses best.pt), a checkpoint or an exported .onnx file; or use --pred and --gt.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Dataset spec (default: the run's own; needed for .onnx).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image size (default: the run's).")] = None,
    val_size: Annotated[Optional[int], typer.Option(help="Synthetic validation images (default: the run's).")] = None,
    val_list: Annotated[Optional[Path], typer.Option(help="Dataset folders: stems to score (default: the run's "
                                                          "validation split).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: Device = "auto",
    pred: Annotated[Optional[Path], typer.Option(
        help="Folder of predicted label maps (PNG or TIFF, any tool's), or with --coco-gt a COCO results "
             "file.")] = None,
    gt: Annotated[Optional[Path], typer.Option(
        help="Folder of ground-truth label maps (PNG or TIFF), matched to --pred by name.")] = None,
    pred_suffix: Annotated[Optional[str], typer.Option(
        help="With --pred DIR: score the files whose stem ends with this, matched without it (e.g. _cp_masks: "
             "x_cp_masks.png against x.png). Default: the *_label files, else all.")] = None,
    gt_suffix: Annotated[Optional[str], typer.Option(
        help="With --gt DIR: the same for the ground truth (e.g. _masks).")] = None,
    coco_gt: Annotated[Optional[Path], typer.Option(
        "--coco-gt", help="COCO annotations file to score the --pred results file against.")] = None,
    cluster: Cluster = None,
    min_size: MinSize = None,
    fill_holes: FillHoles = None,
    bandwidth: Bandwidth = None,
    seed_threshold: SeedThreshold = None,
    tile: Tile = None,
    tile_overlap: TileOverlap = None,
    object_size: ObjectSize = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Where metrics.json and per_image.csv go (default: <run>/eval or <pred>/eval).")
    ] = None,
) -> None:
    """Print SBD / FG Dice / DiC / |DiC| (mean ± std), AP and COCO mask AP; write metrics.json and per_image.csv."""
    from instseg.metrics.reports import write_report
    from instseg.predict.evaluation import EvalData

    (_check_options if coco_gt is None else _check_coco_options)(checkpoint, pred, gt)
    _check_suffixes(pred_suffix, gt_suffix, folders=pred is not None and coco_gt is None)
    if coco_gt is not None:
        report = _score_coco(coco_gt, pred)
        target = out_dir or pred.parent / "eval"
    elif pred is not None:
        report = _score_folders(pred, gt, pred_suffix, gt_suffix)
        target = out_dir or pred / "eval"
    else:
        overrides = {"method": plain(cluster), "min_size": min_size, "fill_holes": fill_holes, "bandwidth": bandwidth,
                     "seed_threshold": seed_threshold}
        report = _score_model(checkpoint, EvalData(data, str(val_list) if val_list else None, val_size=val_size),
                              image_size, batch_size, device, overrides, (tile, tile_overlap),
                              parse_object_size(object_size))
        model_file = Path(report.source.get("checkpoint") or checkpoint)
        target = out_dir or model_file.parent / "eval"
    _print(report)
    write_report(report, target)
    out.print(f"wrote {shown(str(target / 'metrics.json'))} and per_image.csv", highlight=False, soft_wrap=True)


def _score_folders(pred: Path, gt: Path, pred_suffix: str | None, gt_suffix: str | None) -> Report:
    from instseg.metrics.reports import score_folders

    report, unmatched = score_folders(pred, gt, pred_suffix, gt_suffix)
    for side, names in unmatched.items():
        if names:
            listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            err.print(f"warning: {len(names)} {side} file(s) without a partner: {shown(listed)}", highlight=False,
                      soft_wrap=True)
    return report


def _check_options(checkpoint: Path | None, pred: Path | None, gt: Path | None) -> None:
    if (pred is None) != (gt is None):
        raise ConfigError("--pred and --gt go together: give both folders")
    if pred is not None and checkpoint is not None:
        raise ConfigError("give either a run directory / checkpoint / .onnx file or --pred and --gt, not both")
    if pred is None and checkpoint is None:
        raise ConfigError("nothing to evaluate: give a run directory, checkpoint or .onnx file, or --pred DIR --gt DIR")


def _check_suffixes(pred_suffix: str | None, gt_suffix: str | None, folders: bool) -> None:
    """The suffixes name files of --pred / --gt folders: refused with anything else."""
    from instseg.io.inputs import check_suffix

    given = [name for name, value in (("--pred-suffix", pred_suffix), ("--gt-suffix", gt_suffix)) if value is not None]
    if given and not folders:
        raise ConfigError(f"{given[0]} picks files in --pred / --gt folders: give it with --pred DIR --gt DIR")
    check_suffix("--pred-suffix", pred_suffix)
    check_suffix("--gt-suffix", gt_suffix)


def _check_coco_options(checkpoint: Path | None, pred: Path | None, gt: Path | None) -> None:
    if checkpoint is not None or gt is not None:
        raise ConfigError("--coco-gt scores a --pred results file: give no model and no --gt with it")
    if pred is None:
        raise ConfigError("--coco-gt needs --pred RESULTS.json (e.g. from `instseg predict --coco`)")


def _score_coco(coco_gt: Path, pred: Path) -> Report:
    from instseg.io.coco_results import score_coco_files

    return score_coco_files(coco_gt, pred)


def _score_model(path: Path, selection: EvalData, image_size: int | None, batch_size: int, device: str,
                 cluster_options: dict, tiling: tuple[int | None, int | None],
                 object_size: float | str | None = None) -> Report:
    from instseg.predictor import load

    _check_sizes(image_size, batch_size, selection.val_size)
    model = load(path, device=device, provider="cpu" if device == "cpu" else "auto")
    model.set_tiling(*tiling)
    if object_size is not None:
        err.print(f"note: {shown(model.describe_object_size(object_size))}", highlight=False, soft_wrap=True)
    return model.evaluate(selection.data, val_list=selection.val_list, val_split=selection.val_split,
                          val_size=selection.val_size, cluster=cluster_options, batch_size=batch_size,
                          image_size=image_size, object_size=object_size, on_start=lambda line: err.print(shown(line), highlight=False,
                                                                                 soft_wrap=True))


def _check_sizes(image_size: int | None, batch_size: int, val_size: int | None) -> None:
    """The same ranges `train` and `predict` use, checked before a model is loaded."""
    if image_size is not None and not limits.is_int_in(image_size, limits.IMAGE_SIZE):
        raise ConfigError(f"--image-size {image_size}: expected {limits.describe(limits.IMAGE_SIZE)} pixels")
    check_batch_size(batch_size)
    if val_size is not None and val_size < 1:
        raise ConfigError(f"--val-size {val_size}: must be at least 1")


def _print(report: Report) -> None:
    from instseg.metrics.scores import METRIC_LABELS

    summary, head = report.summary, report.counter_head
    table = Table(title=shown(report.title))
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for key, label in METRIC_LABELS.items():
        table.add_row(label, fmt_mean_std(summary, key),
                      end_section=key == "abs_dic" or (key == "recall50" and head is not None))  # CVPPP | AP | head
    if head is not None:
        table.add_row("counter-head count", fmt_mean_std(head, "count"))
        table.add_row("counter-head DiC", fmt_mean_std(head, "dic"))
        table.add_row("counter-head |DiC|", fmt_mean_std(head, "abs_dic"))
    if report.coco is not None:
        _coco_rows(table, report.coco)
    out.print(table)
    worst = report.worst
    out.print(f"worst image: {shown(worst.name)} (SBD {worst.scores.sbd:.3f})", highlight=False, soft_wrap=True)


def _coco_rows(table: Table, coco: dict) -> None:
    """COCO mask AP below the per-image metrics: one number each, over all images."""
    from instseg.io.coco_results import AP_LABELS

    table.rows[-1].end_section = True
    for key, label in AP_LABELS.items():
        table.add_row(label, "n/a" if coco[key] is None else f"{coco[key]:.3f}")
