"""`instseg train`: train a registered model; defaults finish in ~5 min on a 2-core CPU."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `instseg models`).")] = "unet-cbam",
    backbone: Annotated[Optional[str], typer.Option(help="Backbone for decoders that take one.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Base channel width (default: the architecture's).")] = None,
    data: Annotated[str, typer.Option(help="'synthetic', 'cvppp:PATH' or 'folder:PATH'.")] = "synthetic",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    image_size: Annotated[int, typer.Option(help="Training image size (square).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    optimizer: Annotated[str, typer.Option(help="adamw or adam.")] = "adamw",
    scheduler: Annotated[str, typer.Option(help="cosine (with warm-up) or constant.")] = "cosine",
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 1e-4,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0 disables).")] = 5.0,
    embedding_dim: Annotated[int, typer.Option(help="Embedding dimension D.")] = 32,
    max_instances: Annotated[int, typer.Option(help="Count normalisation: counter output x this = count.")] = 20,
    train_size: Annotated[int, typer.Option(help="Synthetic training images per epoch.")] = 384,
    val_size: Annotated[int, typer.Option(help="Synthetic validation images.")] = 32,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for data, initialisation and shuffling.")] = 0,
    out_dir: Annotated[str, typer.Option("--out", help="Parent directory of run directories.")] = "runs",
    name: Annotated[Optional[str], typer.Option(help="Run directory name (default <model>-<timestamp>).")] = None,
) -> None:
    """Train a model; writes runs/<model>-<timestamp>/ with config.json, metrics.jsonl, last.pt, best.pt."""
    from instseg.core.training import TrainConfig, Trainer

    config = TrainConfig(
        model=model, backbone=backbone, width=width, data=data, epochs=epochs, image_size=image_size,
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
