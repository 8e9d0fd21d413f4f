"""Every architecture side by side: size, training and inference speed, and SBD after a fixed budget.

    python bench/models.py                                    # the README models table (128 px, batch 8, ~8 min on 2 cores)
    python bench/models.py --deeplab-variants                 # + the DeepLabV3 output-stride / skip study
    python bench/models.py --size 64 --epochs 1 --train-size 8 --val-size 4 --width 4   # a smoke run

For each model: parameters; training images/s (forward + loss + backward + AdamW step on one
fixed batch, after warm-up); inference ms/image (eval, no grad, same batch); and the
synthetic-leaves validation SBD / FG Dice / |DiC| after training every model with the same
options (the project's Trainer, synthetic data). Speeds are measured in one loop, model after
model, so their ratios are comparable; run it on an idle machine for absolute numbers.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console

from instseg import create_model, list_models
from instseg.testing import synthetic_batch
from instseg.train.config import TrainConfig, parse_model_options
from instseg.train.losses import MultiTaskLoss
from instseg.train.trainer import Trainer

# The reference DeepLabV3 (output stride 16, no skip) and the alternatives to ours (16 + skip).
DEEPLAB_VARIANTS = {
    "deeplabv3 os16 no-skip (reference)": ["skip_stride=none"],
    "deeplabv3 os8 no-skip": ["skip_stride=none", "backbone.output_stride=8"],
    "deeplabv3 os8 skip4": ["backbone.output_stride=8"],
}


@dataclass
class Entry:
    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    label: str
    params: int
    train_ips: float
    infer_ms: float
    metrics: dict[str, dict[str, float]] | None = None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="registered names (default: all)")
    parser.add_argument("--deeplab-variants", action="store_true", help="add the DeepLabV3 reference/ablation rows")
    parser.add_argument("--size", type=int, default=128, help="image size for timing and training")
    parser.add_argument("--batch", type=int, default=8, help="batch size for timing and training")
    parser.add_argument("--width", type=int, default=None, help="override every model's width")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (after 1 warm-up)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per model (0: speed only)")
    parser.add_argument("--train-size", type=int, default=192, help="synthetic training images per epoch")
    parser.add_argument("--val-size", type=int, default=32, help="synthetic validation images")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def entries(args: argparse.Namespace) -> list[Entry]:
    chosen = [Entry(name, name) for name in (args.models or list_models())]
    if args.deeplab_variants:
        chosen += [Entry(label, "deeplabv3", parse_model_options(opts)) for label, opts in DEEPLAB_VARIANTS.items()]
    return chosen


def build(entry: Entry, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    return create_model(entry.model, width=args.width, **entry.options)


def time_training(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Training images per second on one fixed batch (the first step is a warm-up)."""
    model.train()
    loss_fn = MultiTaskLoss(model.max_instances)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    elapsed = 0.0
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn(model(images), labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed += (time.perf_counter() - start) if step else 0.0
    return steps * images.shape[0] / elapsed


@torch.no_grad()
def time_inference(model: torch.nn.Module, images: torch.Tensor, steps: int) -> float:
    """Milliseconds per image in eval mode (the first pass is a warm-up)."""
    model.eval()
    model(images)
    start = time.perf_counter()
    for _ in range(steps):
        model(images)
    return (time.perf_counter() - start) * 1000 / (steps * images.shape[0])


def train_metrics(entry: Entry, args: argparse.Namespace, out: str) -> dict[str, dict[str, float]]:
    config = TrainConfig(
        model=entry.model, width=args.width, model_kwargs=dict(entry.options), image_size=args.size,
        batch_size=args.batch, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
        lr=args.lr, seed=args.seed, device="cpu", out=out, name=entry.label.replace(" ", "_"))
    return Trainer(config, console=Console(stderr=True, quiet=True)).fit().best


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    header = ["model", "params (M)", "train img/s", "infer ms/img"]
    if args.epochs:
        header += [f"SBD @{args.epochs} ep", "FG Dice", "|DiC|"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label, f"{row.params / 1e6:.2f}", f"{row.train_ips:.2f}", f"{row.infer_ms:.1f}"]
        if row.metrics is not None:
            cells += [f"{row.metrics[k]['mean']:.3f}" for k in ("sbd", "fg_dice")]
            cells.append(f"{row.metrics['abs_dic']['mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = synthetic_batch(args.batch, args.size, seed=args.seed)
    chosen = entries(args)
    rows = []
    for entry in chosen:  # speeds first, one model after the other, so ratios are comparable
        model = build(entry, args)
        rows.append(Row(entry.label, sum(p.numel() for p in model.parameters()),
                        time_training(model, images, labels, args.steps), time_inference(model, images, args.steps)))
        print(f"timed {entry.label}", flush=True)
    if args.epochs:
        with tempfile.TemporaryDirectory() as out:
            for entry, row in zip(chosen, rows):
                row.metrics = train_metrics(entry, args, out)
                print(f"trained {entry.label}: SBD {row.metrics['sbd']['mean']:.3f}", flush=True)
    print(f"\n{args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads"
          + (f", {args.epochs} epochs x {args.train_size} synthetic images, {args.val_size} validation images"
             if args.epochs else "") + "\n")
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
