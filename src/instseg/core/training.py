"""The Trainer: one epoch loop for every registered model.

A run directory `runs/<model>-<timestamp>/` receives `config.json` (written first),
`metrics.jsonl` (one line per epoch), `last.pt` every epoch and `best.pt` whenever the
validation SBD improves; all written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

import instseg
from instseg.atomic import atomic_write_text
from instseg.core.checkpoint import save_checkpoint
from instseg.core.clustering import ClusterParams
from instseg.core.data import build_datasets, estimate_mean_std
from instseg.core.device import DeviceChoice, resolve_device
from instseg.core.evaluation import evaluate_dataset, save_epoch_pictures
from instseg.core.config import TrainConfig
from instseg.core.losses import LossWeights, MultiTaskLoss
from instseg.core.registry import create_model, get_registry, plugin_requirements
from instseg.errors import ConfigError

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best: dict[str, dict[str, float]]
    last: dict[str, dict[str, float]]
    seconds: float
    images_per_second: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive numpy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_run_dir(out: str | Path, model: str, name: str | None = None) -> Path:
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {root}: cannot create directory ({exc.strerror})") from exc
    base = name or f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
        run = root / f"{base}{suffix}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"--out {root}: cannot write there ({exc.strerror})") from exc
    raise ConfigError(f"--out {root}: too many runs named {base}")


def _lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Builds data, model, loss and optimiser from a TrainConfig and runs the epochs."""

    def __init__(self, config: TrainConfig, console: Console | None = None) -> None:
        config.validate()
        self.config = config
        self.console = console or Console(stderr=True)
        seed_everything(config.seed)
        self.device: DeviceChoice = resolve_device(config.device, amp=config.amp)
        spec = get_registry().model_spec(config.model)
        self.train_set, self.val_set = build_datasets(
            config.data, image_size=config.image_size, seed=config.seed,
            train_size=config.train_size, val_size=config.val_size)
        self.mean, self.std = estimate_mean_std(self.train_set)
        self.model = create_model(
            spec.name, backbone=config.backbone, width=config.width, embedding_dim=config.embedding_dim,
            max_instances=config.max_instances, mean=self.mean, std=self.std, **config.model_kwargs,
        ).to(self.device.device)
        self.model_init = {
            "name": spec.name,
            "backbone": config.backbone,
            "width": config.width,
            "embedding_dim": config.embedding_dim,
            "max_instances": config.max_instances,
            "mean": list(self.mean),
            "std": list(self.std),
            "kwargs": dict(config.model_kwargs),
        }
        self.plugins = plugin_requirements(spec.name, config.backbone)
        self.loss_fn = MultiTaskLoss(config.max_instances, LossWeights(**config.loss_weights),
                                     config.delta_v, config.delta_d)
        self.optimizer = OPTIMIZERS[config.optimizer](
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        pin = self.device.is_cuda
        self.train_loader = DataLoader(
            self.train_set, batch_size=config.batch_size, shuffle=True, drop_last=len(self.train_set) > config.batch_size,
            num_workers=config.workers, worker_init_fn=seed_worker, generator=generator, pin_memory=pin,
            persistent_workers=config.workers > 0)
        self.val_loader = DataLoader(self.val_set, batch_size=config.batch_size, num_workers=config.workers,
                                     pin_memory=pin)
        total = config.epochs * len(self.train_loader)
        warmup = int(config.warmup_epochs * len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(total, warmup, config.scheduler))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.amp_dtype == torch.float16)
        self.cluster = ClusterParams.from_config(asdict(config))
        self.run_dir = make_run_dir(config.out, spec.name, config.name)
        self.step = 0

    # -- the loop --------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        n_params = sum(p.numel() for p in self.model.parameters())
        self.console.print(
            f"[bold]instseg train[/] {cfg.model} ({n_params / 1e6:.2f} M params) on {self.device.describe()}; "
            f"data {cfg.data} {len(self.train_set)}/{len(self.val_set)} images at {cfg.image_size}px -> {self.run_dir}")
        atomic_write_text(self.run_dir / "config.json", json.dumps(self._config_record(), indent=2))
        best_sbd, best_epoch, best, last = -1.0, 0, {}, {}
        train_seconds, train_images = 0.0, 0
        start = time.perf_counter()
        with self._progress() as progress:
            task = progress.add_task("train", total=cfg.epochs * len(self.train_loader), loss=float("nan"), epoch="")
            for epoch in range(1, cfg.epochs + 1):
                t0 = time.perf_counter()
                train_terms, n_images = self._train_epoch(epoch, progress, task)
                train_seconds += time.perf_counter() - t0
                train_images += n_images
                last = evaluate_dataset(self.model, self.val_loader, self.device.device, params=self.cluster).summary()
                improved = last["sbd"]["mean"] > best_sbd
                if improved:
                    best_sbd, best_epoch, best = last["sbd"]["mean"], epoch, last
                record = {
                    "epoch": epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                    "train": train_terms, "val": {k: v["mean"] for k, v in last.items()},
                    "images_per_second": n_images / max(time.perf_counter() - t0, 1e-9),
                    "seconds": time.perf_counter() - start,
                }
                self._append_metrics(record)
                save_epoch_pictures(self.run_dir, epoch, self.model, self.val_set, self.device.device, self.cluster,
                                    cfg.image_size)
                self._save("last.pt", epoch, last, best_sbd)
                if improved:
                    self._save("best.pt", epoch, last, best_sbd)
                progress.console.print(
                    f"epoch {epoch:>3}/{cfg.epochs}  loss {train_terms['loss']:.4f}  "
                    f"SBD {last['sbd']['mean']:.3f}  FG Dice {last['fg_dice']['mean']:.3f}  "
                    f"|DiC| {last['abs_dic']['mean']:.2f}" + ("  [green]best[/]" if improved else ""))
        return TrainResult(self.run_dir, best_epoch, best, last, time.perf_counter() - start,
                           train_images / max(train_seconds, 1e-9))

    def _train_epoch(self, epoch: int, progress: Progress, task) -> tuple[dict[str, float], int]:
        self.model.train()
        sums: dict[str, float] = {}
        batches, images = 0, 0
        device = self.device.device
        for batch in self.train_loader:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["labels"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=self.device.amp_dtype or torch.float32,
                                enabled=self.device.amp_dtype is not None):
                output = self.model(x)
            terms = self.loss_fn(output, y)
            if not torch.isfinite(terms["loss"]):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}, step {self.step}: "
                    + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            if self.config.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            batches += 1
            images += x.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            progress.update(task, advance=1, loss=sums["loss"] / batches, epoch=f"epoch {epoch}/{self.config.epochs}")
        return {k: v / max(batches, 1) for k, v in sums.items()}, images

    # -- files -----------------------------------------------------------------------
    def _config_record(self) -> dict[str, Any]:
        return {
            "instseg_version": instseg.__version__,
            "config": asdict(self.config),
            "model": self.model_init,
            "plugins": self.plugins,
            "device": self.device.describe(),
            "torch_version": torch.__version__,
            "created": datetime.now().isoformat(timespec="seconds"),
        }

    def _append_metrics(self, record: dict[str, Any]) -> None:
        path = self.run_dir / "metrics.jsonl"
        previous = path.read_text() if path.exists() else ""
        atomic_write_text(path, previous + json.dumps(record) + "\n")

    def _save(self, name: str, epoch: int, metrics: dict, best_sbd: float) -> None:
        save_checkpoint(self.run_dir / name, {
            "instseg_version": instseg.__version__,
            "model": self.model_init,
            "plugins": self.plugins,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": asdict(self.config),
            "epoch": epoch,
            "step": self.step,
            "best_sbd": best_sbd,
            "metrics": metrics,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        })

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False)
