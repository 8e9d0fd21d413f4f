"""`instseg train`: train a registered model; defaults finish in ~5 min on a 2-core CPU."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out
from instseg.core.config import OPTIMIZERS, SCHEDULERS, TrainConfig, parse_model_options

D = TrainConfig()  # the defaults live in one place


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `instseg models`).")] = D.model,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone for decoders that take one.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Base channel width (default: the architecture's).")] = None,
    model_option: Annotated[Optional[List[str]], typer.Option(
        "--model-option", "-o", help="Architecture option KEY=VALUE, or backbone.KEY=VALUE for its backbone; "
                                     "repeatable (e.g. -o skip_stride=none -o backbone.output_stride=8).")] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="Local state dict for the backbone (or a run's checkpoint: its backbone.* weights).")] = None,
    data: Annotated[str, typer.Option(help="'synthetic', 'cvppp:PATH' or 'folder:PATH'.")] = D.data,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = D.epochs,
    image_size: Annotated[int, typer.Option(help="Training image size (square).")] = D.image_size,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = D.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = D.lr,
    optimizer: Annotated[str, typer.Option(help="/".join(OPTIMIZERS))] = D.optimizer,
    scheduler: Annotated[str, typer.Option(help="/".join(SCHEDULERS) + " (after a linear warm-up)")] = D.scheduler,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = D.weight_decay,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0 disables).")] = D.grad_clip,
    embedding_dim: Annotated[int, typer.Option(help="Embedding dimension D.")] = D.embedding_dim,
    max_instances: Annotated[int, typer.Option(help="Count normalisation: counter output x this = count.")] = D.max_instances,
    train_size: Annotated[int, typer.Option(help="Synthetic training images per epoch.")] = D.train_size,
    val_size: Annotated[int, typer.Option(help="Synthetic validation images.")] = D.val_size,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = D.workers,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = D.device,
    seed: Annotated[int, typer.Option(help="Seed for data, initialisation and shuffling.")] = D.seed,
    out_dir: Annotated[str, typer.Option("--out", help="Parent directory of run directories.")] = D.out,
    name: Annotated[Optional[str], typer.Option(help="Run directory name (default <model>-<timestamp>).")] = None,
) -> None:
    """Train a model; writes runs/<model>-<timestamp>/ with config.json, metrics.jsonl, last.pt, best.pt."""
    from instseg.core.training import TrainConfig, Trainer

    config = TrainConfig(
        model=model, backbone=backbone, width=width, model_kwargs=parse_model_options(model_option or []),
        weights=weights, data=data, epochs=epochs, image_size=image_size,
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
