"""`instseg evaluate`: score a trained model with the CVPPP metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory (uses best.pt) or a checkpoint file.")],
    data: Annotated[Optional[str], typer.Option(help="Dataset spec (default: the run's own).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image size (default: the run's).")] = None,
    val_size: Annotated[Optional[int], typer.Option(help="Synthetic validation images (default: the run's).")] = None,
    val_list: Annotated[Optional[Path], typer.Option(help="Dataset folders: stems to score (default: the run's "
                                                          "validation split).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where metrics.json goes (default: <run>/eval).")] = None,
) -> None:
    """Print SBD / FG Dice / DiC / |DiC| (mean ± std) on a validation set and write metrics.json."""
    from instseg.atomic import atomic_write_text
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
    _, val_set = build_datasets(spec, image_size=size, seed=cfg["seed"], train_size=1,
                                val_size=val_size or cfg["val_size"], val_split=cfg.get("val_split", 0.2),
                                val_list=val_list or cfg.get("val_list"), augment=False,
                                max_instances=ckpt["model"]["max_instances"])
    err.print(f"evaluating {ckpt['path']} (epoch {ckpt['epoch']}) on {spec} ({len(val_set)} images, {size}px) "
              f"on {choice.describe()}", highlight=False)
    result = evaluate_dataset(model, val_set, choice.device, batch_size=batch_size, image_size=size,
                              params=ClusterParams(method=cfg.get("cluster", "kmeans"), seed=cfg["seed"]))
    summary = result.summary()

    table = Table(title=f"{ckpt['model']['name']} on {spec} ({len(result.scores)} images)")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for key, label in (("sbd", "SBD"), ("fg_dice", "FG Dice"), ("dic", "DiC"), ("abs_dic", "|DiC|")):
        table.add_row(label, fmt_mean_std(summary, key))
    out.print(table)

    target = out_dir or Path(ckpt["path"]).parent / "eval"
    report = {"checkpoint": ckpt["path"], "epoch": ckpt["epoch"], "data": spec, "image_size": size,
              "images": len(result.scores), "metrics": summary}
    atomic_write_text(target / "metrics.json", json.dumps(report, indent=2))
    out.print(f"wrote {target / 'metrics.json'}")
