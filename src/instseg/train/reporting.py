"""What training says on the console: the opening line, the progress bar, one line per epoch,
and the warning for a skipped step. Rank 0 speaks; the other processes get a quiet console."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TextColumn

from instseg.terminal import progress_bar, shown
from instseg.train.config import TrainConfig


class TrainingReporter:
    def __init__(self, console: Console, main: bool) -> None:
        self.console = console if main else Console(stderr=True, quiet=True)
        self.main = main

    def announce(self, cfg: TrainConfig, *, params: int, device: str, world: int, cuda: bool, train_images: int,
                 val_images: int, run_dir: Path, resumed: str | None, position: str, workers: int) -> None:
        scale = (f"{world} processes ({'nccl' if cuda else 'gloo'}{', SyncBatchNorm' if cfg.sync_bn else ''}); "
                 if world > 1 else "")
        preset = f"preset {cfg.preset}; " if cfg.preset else ""
        self.console.print(
            f"[bold]instseg train[/] {cfg.model} ({params / 1e6:.2f} M params) on {device}; {scale}{preset}"
            f"global batch {world * cfg.accumulate * cfg.batch_size} = {world} x accumulate {cfg.accumulate} x "
            f"batch {cfg.batch_size}; data {shown(cfg.data)} {train_images}/{val_images} images at "
            f"{cfg.image_size}px{'' if cfg.scale is None else f' crops, scale {cfg.scale:g}'} -> {shown(run_dir)}")
        if workers < cfg.workers:
            self.console.print(f"--workers {cfg.workers}: using {workers} DataLoader worker processes "
                               f"(this process may use {workers} CPUs)", highlight=False)
        if resumed:
            self.console.print(f"resuming {shown(resumed)}: {position}")
        if cfg.compile:
            self.console.print("torch.compile: the first steps compile the model and are slow")

    def progress(self) -> Progress:
        return progress_bar("{task.fields[epoch]}", self.console, TextColumn("loss {task.fields[loss]:.4f}"),
                            disable=not self.main)

    def epoch(self, epoch: int, epochs: int, loss: float, metrics: dict[str, dict[str, float]], best: bool,
              skipped: int) -> None:
        self.console.print(
            f"epoch {epoch:>3}/{epochs}  loss {loss:.4f}  SBD {metrics['sbd']['mean']:.3f}  "
            f"FG Dice {metrics['fg_dice']['mean']:.3f}  |DiC| {metrics['abs_dic']['mean']:.2f}"
            + ("  [green]best[/]" if best else "") + (f"  [yellow]{skipped} step(s) skipped[/]" if skipped else ""))

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]{shown(message)}[/]", highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        """One line, never wrapped: notes name paths a user copies."""
        self.console.print(shown(message), highlight=False, soft_wrap=True)
