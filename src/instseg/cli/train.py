"""`instseg train`: train a registered model; defaults finish in ~5 min on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out
from instseg.core.config import OPTIMIZERS, SCHEDULERS, TrainConfig

D = TrainConfig()  # the defaults live in one place


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `instseg models`).")] = D.model,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone for decoders that take one.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Base channel width (default: the architecture's).")] = None,
    data: Annotated[str, typer.Option(help="'synthetic', 'cvppp:PATH', 'folder:PATH' or a dataset folder.")] = D.data,
    val_split: Annotated[float, typer.Option(help="Dataset folders: seeded fraction of images for validation.")] = D.val_split,
    val_list: Annotated[Optional[Path], typer.Option(help="Dataset folders: file of validation stems, one per line "
                                                          "(overrides --val-split).")] = None,
    augment: Annotated[bool, typer.Option(help="Dataset folders: paired flips, rotations, zoom, colour jitter, blur.")] = D.augment,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = D.epochs,
    image_size: Annotated[int, typer.Option(help="Training crop size (square); images are scaled so that their "
                                                 "shorter side is this, here and at prediction.")] = D.image_size,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = D.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = D.lr,
    optimizer: Annotated[str, typer.Option(help="/".join(OPTIMIZERS))] = D.optimizer,
    scheduler: Annotated[str, typer.Option(help="/".join(SCHEDULERS) + " (after a linear warm-up)")] = D.scheduler,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = D.weight_decay,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0 disables).")] = D.grad_clip,
    embedding_dim: Annotated[int, typer.Option(help="Embedding dimension D.")] = D.embedding_dim,
    max_instances: Annotated[int, typer.Option(help="Count normalisation: counter output x this = count.")] = D.max_instances,
    train_size: Annotated[int, typer.Option(help="Synthetic data only: training images per epoch.")] = D.train_size,
    val_size: Annotated[int, typer.Option(help="Synthetic data only: validation images.")] = D.val_size,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = D.workers,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = D.device,
    seed: Annotated[int, typer.Option(help="Seed for data, initialisation and shuffling.")] = D.seed,
    out_dir: Annotated[str, typer.Option("--out", help="Parent directory of run directories.")] = D.out,
    name: Annotated[Optional[str], typer.Option(help="Run directory name (default <model>-<timestamp>).")] = None,
) -> None:
    """Train a model; writes runs/<model>-<timestamp>/ with config.json, metrics.jsonl, last.pt, best.pt."""
    from instseg.core.data.layouts import parse_data_spec
    from instseg.core.training import TrainConfig, Trainer

    config = TrainConfig(
        model=model, backbone=backbone, width=width, data=str(parse_data_spec(data).absolute()),
        val_split=val_split, val_list=str(val_list.absolute()) if val_list else None, augment=augment,
        epochs=epochs, image_size=image_size,
        batch_size=batch_size, lr=lr, optimizer=optimizer, scheduler=scheduler, weight_decay=weight_decay,
        grad_clip=grad_clip, embedding_dim=embedding_dim, max_instances=max_instances, train_size=train_size,
        val_size=val_size, workers=workers, device=device, seed=seed, out=out_dir, name=name)
    result = Trainer(config, console=err).fit()

    table = Table(title=f"{model}: best epoch {result.best_epoch}/{epochs}")
    table.add_column("metric")
    table.add_column("best (mean ± std)", justify="right")
    table.add_column("last epoch", justify="right")
    for key, label in (("sbd", "SBD"), ("fg_dice", "FG Dice"), ("dic", "DiC"), ("abs_dic", "|DiC|")):
        table.add_row(label, fmt_mean_std(result.best, key), fmt_mean_std(result.last, key))
    table.add_row("wall time", f"{result.seconds:.0f} s", "")
    table.add_row("train images/s", f"{result.images_per_second:.1f}", "")
    out.print(table)
    out.print(f"run directory: {result.run_dir}")
    out.print(f"next: instseg evaluate {result.run_dir}")
