"""The Trainer: one loop for every registered model, on one device or many, that never loses work.

A run directory `runs/<model>-<timestamp>/` receives `config.json` (written before the first
step, which also proves the directory is writable), `metrics.jsonl` (one line per epoch),
`last.pt` after every epoch and whenever training is interrupted, and `best.pt` whenever the
validation SBD improves; all written atomically, by rank 0 only.

Scale: under torchrun every process runs this same code on its share of each global batch
(`GlobalBatchSampler`) inside DistributedDataParallel; validation images are split across the
processes and their scores gathered. Survive: SIGINT / SIGTERM finish the current optimizer
step, save last.pt with the position in the epoch and every RNG state, and `--resume RUN_DIR`
continues from exactly there; a non-finite loss skips its step.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

import instseg
from instseg.atomic import atomic_write_bytes, atomic_write_text
from instseg.core.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from instseg.core.clustering import ClusterParams
from instseg.core.config import TrainConfig
from instseg.core.data import build_datasets, estimate_mean_std, eval_loader
from instseg.core.device import DeviceChoice, check_compile_supported, resolve_device
from instseg.core.distributed import DistContext, GlobalBatchSampler
from instseg.core.evaluation import EvalResult, evaluate_dataset, save_epoch_pictures
from instseg.core.losses import LossWeights, MultiTaskLoss
from instseg.core.registry import create_model, get_registry, load_backbone_weights, plugin_requirements
from instseg.errors import CheckpointError, ConfigError, TrainingError

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZER_SLOTS = 2  # Adam(W) keeps two tensors per parameter, so a checkpoint is ~3x the weights
RESUME_OVERRIDES = ("device", "workers", "compile", "max_nonfinite", "accumulate")  # how a run runs, not what it computes


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best: dict[str, dict[str, float]]
    last: dict[str, dict[str, float]]
    seconds: float
    images_per_second: float
    interrupted_by: int | None = None  # the signal that stopped training early
    epoch: int = 0  # where training stopped
    epoch_step: int = 0
    steps_per_epoch: int = 0


@dataclass
class StepResult:
    terms: dict[str, float] | None  # loss terms averaged over the micro-batches; None: step skipped
    images: int
    nonfinite: dict[str, float] | None = None  # this process's terms when its loss was not finite


@dataclass
class EpochStats:
    """Running sums of one epoch; saved mid-epoch so a resumed epoch reports the same means."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # steps that updated the weights
    skipped: int = 0  # steps skipped for a non-finite loss
    images: int = 0  # images this process trained on
    seconds: float = 0.0

    def add(self, result: StepResult) -> None:
        self.images += result.images
        if result.terms is None:
            self.skipped += 1
            return
        self.steps += 1
        for name, value in result.terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def reduced(self, dist: DistContext) -> tuple[dict[str, float], int, int]:
        """(mean terms, skipped steps, images) over all processes."""
        names = sorted(self.sums)
        totals = dist.sum([self.sums[n] for n in names] + [float(self.steps), float(self.images)])
        steps, images = totals[-2], totals[-1]
        return {n: v / max(steps, 1.0) for n, v in zip(names, totals)}, self.skipped, int(images)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive numpy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the DataLoader generator for one epoch on one process (worker seeds derive from it)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


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


def check_free_space(run_dir: Path, needed: int) -> None:
    """Fail before training when the disk cannot take the checkpoints the run will write."""
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise ConfigError(f"--out {run_dir.parent}: only {free / 2**20:.1f} MiB free on that disk, "
                          f"the checkpoints of this run need about {needed / 2**20:.1f} MiB")


def _lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class GracefulStop:
    """SIGINT / SIGTERM ask training to stop after the current step; a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False) -> None:
        self.signum: int | None = None
        self.quiet = quiet
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signum = signum
        if not self.quiet:
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and saving last.pt "
                        "(send it again to abort without saving)\n".encode())


class Trainer:
    """Builds data, model, loss and optimiser from a TrainConfig and runs the epochs.

    `resume` is a checkpoint from `load_resume_checkpoint`: the run continues in its own
    directory from the step it stopped at. `dist` describes a torchrun launch (read from the
    environment by default).
    """

    def __init__(self, config: TrainConfig, console: Console | None = None, *,
                 dist: DistContext | None = None, resume: dict[str, Any] | None = None) -> None:
        config.validate()
        self.config = config
        self.dist = dist or DistContext.from_env()
        self.console = console or Console(stderr=True)
        if not self.dist.is_main:
            self.console = Console(stderr=True, quiet=True)
        self.device: DeviceChoice = resolve_device(
            config.device, amp=config.amp, local_rank=self.dist.local_rank if self.dist.enabled else None)
        self._check_options()
        self.dist.start(self.device.device)
        seed_everything(config.seed)
        self._build_datasets()
        self._build_model(initial_weights=resume is None)  # a resumed run takes its weights from last.pt
        self._build_optimisation()
        self._build_loaders()
        self._build_schedule()
        seed_everything(config.seed + self.dist.rank)  # model init is identical everywhere; data randomness is not
        self.cluster = ClusterParams.from_config(asdict(config))
        self.epoch, self.epoch_step, self.step, self.epoch_done = 1, 0, 0, False
        self.stats = EpochStats()
        self.nonfinite_streak = 0
        self.best_sbd, self.best_epoch, self.best, self.last = -1.0, 0, {}, {}
        self.run_seconds = 0.0  # wall time of earlier sessions of this run
        self._clock = time.perf_counter()
        self.resumed_from: str | None = None
        if resume is None:
            self.run_dir: Path = self.dist.run_on_main(self._new_run_dir)
        else:
            self.run_dir = Path(resume["path"]).parent
            self._restore(resume)
        self.dist.run_on_main(self._check_disk)

    # -- construction ----------------------------------------------------------------
    def _check_options(self) -> None:
        if self.config.sync_bn and self.dist.enabled and not self.device.is_cuda:
            raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU "
                              "(without it each process normalises its own batch)")
        if self.config.compile:
            check_compile_supported(self.device.device)

    def _build_datasets(self) -> None:
        cfg = self.config
        self.train_set, self.val_set = build_datasets(
            cfg.data, image_size=cfg.image_size, seed=cfg.seed, train_size=cfg.train_size, val_size=cfg.val_size,
            val_split=cfg.val_split, val_list=cfg.val_list, augment=cfg.augment, max_instances=cfg.max_instances)
        self.mean, self.std = estimate_mean_std(self.train_set)

    def _build_model(self, initial_weights: bool) -> None:
        """The model (`self.model`, what checkpoints hold) and what training calls (`self.net`):
        the same module, wrapped in DDP under torchrun and compiled with --compile.
        `initial_weights`: load the `--weights` backbone state dict."""
        cfg = self.config
        spec = get_registry().model_spec(cfg.model)
        model = create_model(
            spec.name, backbone=cfg.backbone, width=cfg.width, embedding_dim=cfg.embedding_dim,
            max_instances=cfg.max_instances, mean=self.mean, std=self.std, **cfg.model_kwargs,
        ).to(self.device.device)
        if cfg.weights and initial_weights:
            self.console.print(load_backbone_weights(model.backbone, cfg.weights).summary())
        self.model_init = {
            "name": spec.name,
            "backbone": cfg.backbone,
            "width": cfg.width,
            "embedding_dim": cfg.embedding_dim,
            "max_instances": cfg.max_instances,
            "mean": list(self.mean),
            "std": list(self.std),
            "kwargs": dict(cfg.model_kwargs),
        }
        self.plugins = plugin_requirements(spec.name, cfg.backbone)
        if self.device.is_cuda:
            torch.backends.cudnn.benchmark = True  # training sizes are fixed: let cuDNN pick its fastest kernels
        # channels-last (NHWC) suits cuDNN and oneDNN alike: measured ~14% faster on a 2-core CPU too
        model = model.to(memory_format=torch.channels_last)
        if self.dist.enabled and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model: nn.Module = model
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            self.ddp = DistributedDataParallel(model, device_ids=[self.device.device.index] if self.device.is_cuda else None)
        net = self.ddp or model
        self.net: nn.Module = torch.compile(net) if cfg.compile else net

    def _build_optimisation(self) -> None:
        cfg = self.config
        self.loss_fn = MultiTaskLoss(cfg.max_instances, LossWeights(**cfg.loss_weights), cfg.delta_v, cfg.delta_d)
        self.optimizer = OPTIMIZERS[cfg.optimizer](self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.amp_dtype == torch.float16)

    def _build_loaders(self) -> None:
        cfg = self.config
        pin = self.device.is_cuda
        self.train_sampler = GlobalBatchSampler(
            self.train_set, batch_size=cfg.batch_size, accumulate=cfg.accumulate,
            num_replicas=self.dist.world_size, rank=self.dist.rank, seed=cfg.seed)
        self.steps_per_epoch = self.train_sampler.steps_per_epoch
        self.loader_generator = torch.Generator()
        self.train_loader = DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=self.train_sampler, num_workers=cfg.workers,
            worker_init_fn=seed_worker, generator=self.loader_generator, pin_memory=pin,
            persistent_workers=cfg.workers > 0)
        val_share = Subset(self.val_set, range(self.dist.rank, len(self.val_set), self.dist.world_size))
        self.val_loader = eval_loader(val_share, cfg.batch_size, cfg.workers, pin)

    def _build_schedule(self) -> None:
        cfg = self.config
        total = cfg.epochs * self.steps_per_epoch
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(total, warmup, cfg.scheduler))

    def _new_run_dir(self) -> Path:
        run_dir = make_run_dir(self.config.out, self.model_init["name"], self.config.name)
        try:
            atomic_write_text(run_dir / "config.json", json.dumps(self._config_record(), indent=2))
        except OSError as exc:
            raise ConfigError(f"--out {self.config.out}: cannot write {run_dir / 'config.json'} "
                              f"({exc.strerror or exc})") from exc
        return run_dir

    def _check_disk(self) -> None:
        """Before the first step: the run directory takes a write and has room for the checkpoints."""
        probe = self.run_dir / ".write-test"
        try:
            atomic_write_bytes(probe, b"instseg")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write in {self.run_dir} ({exc.strerror or exc})") from exc
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        # last.pt and best.pt, plus the temporary copy that exists while one of them is replaced
        check_free_space(self.run_dir, 3 * weights * (1 + OPTIMIZER_SLOTS) + 2**20)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Load everything last.pt holds, so the run continues as if it had never stopped."""
        state = checkpoint["training"]
        path = checkpoint["path"]
        saved = (state["world_size"], state["accumulate"], state["batch_size"])
        now = (self.dist.world_size, self.config.accumulate, self.config.batch_size)
        if math.prod(saved) != math.prod(now):
            raise ConfigError(
                f"{path}: the run trained with {saved[0]} process(es) x accumulate {saved[1]} x batch {saved[2]}; "
                f"resuming needs the same global batch ({math.prod(saved)}): choose --accumulate so that "
                f"processes x accumulate = {saved[0] * saved[1]} (now {now[0]} x {now[1]})")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(f"{path}: the run had {state['steps_per_epoch']} steps per epoch, the data now gives "
                              f"{self.steps_per_epoch}: the training data changed")
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: does not fit this model and optimiser ({str(exc).splitlines()[0]})") from exc
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.epoch_step = checkpoint["step"], checkpoint["epoch"], state["epoch_step"]
        self.stats = EpochStats(**state["epoch_stats"])
        if state["epoch_done"]:
            self.epoch, self.epoch_step, self.stats = self.epoch + 1, 0, EpochStats()
        self.nonfinite_streak = state["nonfinite_streak"]
        self.best_sbd, self.best_epoch = checkpoint["best_sbd"], state["best_epoch"]
        self.best, self.last = state["best"], checkpoint["metrics"]
        self.run_seconds = state["seconds"]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            seed_everything(self.config.seed + self.dist.rank + 7919 * self.step)
            self.console.print(f"note: {path} holds the RNG states of {len(rng)} process(es), this run has "
                               f"{self.dist.world_size}: random streams are re-seeded")
        self.resumed_from = path
        if self.dist.is_main:
            self._trim_metrics(self.epoch - 1)

    # -- the loop --------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        self._announce()
        start = self._clock = time.perf_counter()
        self.session_images, self.session_seconds = 0, 0.0
        with GracefulStop(quiet=not self.dist.is_main) as stop, self._progress() as progress:
            task = progress.add_task("train", total=cfg.epochs * self.steps_per_epoch, loss=float("nan"), epoch="",
                                     completed=(self.epoch - 1) * self.steps_per_epoch + self.epoch_step)
            while self.epoch <= cfg.epochs:
                self.epoch_done = False
                signum = self._train_epoch(stop, progress, task)
                if signum is None or self.epoch_step == self.steps_per_epoch:
                    self._end_epoch()
                    signum = signum or self._agreed_signal(stop)
                if signum is not None:
                    if not self.epoch_done:
                        self._save()
                    return self._result(start, interrupted_by=signum)
                self.epoch, self.epoch_step, self.stats = self.epoch + 1, 0, EpochStats()
        return self._result(start)

    def _train_epoch(self, stop: GracefulStop, progress: Progress, task: Any) -> int | None:
        """Optimizer steps from `self.epoch_step` to the end of the epoch; the signal if one stopped it."""
        self.model.train()
        self.train_sampler.set_epoch(self.epoch)
        self.train_sampler.set_start(self.epoch_step)
        self.loader_generator.manual_seed(stream_seed(self.config.seed, self.epoch, self.dist.rank))
        batches = iter(self.train_loader)
        t0 = time.perf_counter()
        try:
            while self.epoch_step < self.steps_per_epoch:
                result = self.train_step(itertools.islice(batches, self.config.accumulate))
                self.step += 1
                self.epoch_step += 1
                self.stats.add(result)
                self.session_images += result.images
                self._check_nonfinite(result)
                progress.update(task, advance=1, epoch=f"epoch {self.epoch}/{self.config.epochs}",
                                loss=self.stats.sums.get("loss", float("nan")) / max(self.stats.steps, 1))
                signum = self._agreed_signal(stop)
                if signum is not None:
                    return signum
            return None
        finally:
            elapsed = time.perf_counter() - t0
            self.stats.seconds += elapsed
            self.session_seconds += elapsed

    def train_step(self, micro_batches: Iterable[dict[str, Any]]) -> StepResult:
        """One optimizer step over `accumulate` micro-batches.

        Each micro-batch loss is scaled by 1/accumulate so the gradients add up to the mean;
        under DDP they are synchronised on the last micro-batch only (`no_sync` before it).
        A non-finite loss on any process makes every process skip the whole step, so the
        replicas stay identical; the LR schedule advances either way.
        """
        k_total = self.config.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        images, skipped, local_bad = 0, False, None
        for k, batch in enumerate(micro_batches):
            images += len(batch["image"])
            if skipped:
                continue
            x, y = self._to_device(batch)
            with self._grad_sync(last=k == k_total - 1):
                with torch.autocast(self.device.device.type, dtype=self.device.amp_dtype or torch.float32,
                                    enabled=self.device.amp_dtype is not None):
                    output = self.net(x)
                terms = self.loss_fn(output, y)
                values = {name: float(v.detach()) for name, v in terms.items()}
                finite = math.isfinite(values["loss"])
                if self.dist.max(0.0 if finite else 1.0) > 0:
                    skipped, local_bad = True, (None if finite else values)
                    continue
                self.scaler.scale(terms["loss"] / k_total).backward()
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value / k_total
        if not skipped:
            self._optimizer_step()
        with warnings.catch_warnings():
            # The schedule follows the step count on purpose, also over skipped steps (ours, or
            # the grad scaler's while it calibrates): torch warns when no optimizer.step() ran.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        return StepResult(None if skipped else sums, images, local_bad)

    def _to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.device.device
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x, batch["labels"].to(device, non_blocking=True)

    def _grad_sync(self, last: bool) -> AbstractContextManager:
        return self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()

    def _optimizer_step(self) -> None:
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _check_nonfinite(self, result: StepResult) -> None:
        """Log a skipped step; stop (saving last.pt) after --max-nonfinite of them in a row."""
        if result.terms is not None:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        limit = self.config.max_nonfinite
        where = (", ".join(f"{k}={v:.4g}" for k, v in result.nonfinite.items()) if result.nonfinite
                 else "on another process")
        message = (f"epoch {self.epoch} step {self.epoch_step}: non-finite loss ({where}); step skipped "
                   f"({self.nonfinite_streak}/{limit} in a row)")
        self.console.print(f"[yellow]{message}[/]", highlight=False)
        if self.nonfinite_streak >= limit:
            self._save()
            raise TrainingError(
                f"stopped at epoch {self.epoch} step {self.epoch_step}: the loss was non-finite for {limit} steps "
                f"in a row. The weights (never updated by those steps) are in {self.run_dir / 'last.pt'}; "
                "try a lower --lr, a --grad-clip, --no-amp, or check the data")

    def _agreed_signal(self, stop: GracefulStop) -> int | None:
        """The stop signal if any process received one: all processes stop after the same step."""
        signum = int(self.dist.max(float(stop.signum or 0)))
        return signum or None

    def _elapsed(self) -> float:
        return self.run_seconds + time.perf_counter() - self._clock

    def _end_epoch(self) -> None:
        """Everything done once per epoch after its last step: validate, record, checkpoint, report."""
        cfg = self.config
        self.dist.average_buffers(self.model)
        train, skipped, images = self.stats.reduced(self.dist)
        self.last = self._validate().summary()
        improved = self.last["sbd"]["mean"] > self.best_sbd
        if improved:
            self.best_sbd, self.best_epoch, self.best = self.last["sbd"]["mean"], self.epoch, self.last
        self.epoch_done = True
        record = {
            "epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
            "train": train, "skipped_steps": skipped, "val": {k: v["mean"] for k, v in self.last.items()},
            "images_per_second": images / max(self.stats.seconds, 1e-9),
            "seconds": self._elapsed(),
        }
        self.dist.run_on_main(lambda: self._append_metrics(record))
        self.dist.run_on_main(lambda: save_epoch_pictures(
            self.run_dir, self.epoch, self.model, self.val_set, self.device.device, self.cluster, cfg.image_size))
        self._save(best=improved)
        self.console.print(
            f"epoch {self.epoch:>3}/{cfg.epochs}  loss {train.get('loss', float('nan')):.4f}  "
            f"SBD {self.last['sbd']['mean']:.3f}  FG Dice {self.last['fg_dice']['mean']:.3f}  "
            f"|DiC| {self.last['abs_dic']['mean']:.2f}" + ("  [green]best[/]" if improved else "")
            + (f"  [yellow]{skipped} step(s) skipped[/]" if skipped else ""))

    def _validate(self) -> EvalResult:
        """Each process scores its share of the validation images (clustering, on the CPU,
        dominates); gathering the per-image scores gives every process the same result."""
        share = evaluate_dataset(self.model, self.val_loader, self.device.device, params=self.cluster,
                                 image_size=self.config.image_size)
        merged = EvalResult()
        rows = [row for part in self.dist.gather(share) for row in zip(part.names, part.scores, part.head_counts)]
        for name, score, count in sorted(rows, key=lambda row: row[0]):  # shares are batched by image size
            merged.names.append(name)
            merged.scores.append(score)
            merged.head_counts.append(count)
        return merged

    def _result(self, start: float, interrupted_by: int | None = None) -> TrainResult:
        images = int(self.dist.sum([float(self.session_images)])[0])
        return TrainResult(self.run_dir, self.best_epoch, self.best, self.last, time.perf_counter() - start,
                           images / max(self.session_seconds, 1e-9), interrupted_by, self.epoch, self.epoch_step,
                           self.steps_per_epoch)

    # -- files -----------------------------------------------------------------------
    def _config_record(self) -> dict[str, Any]:
        return {
            "instseg_version": instseg.__version__,
            "config": asdict(self.config),
            "model": self.model_init,
            "plugins": self.plugins,
            "device": self.device.describe(),
            "processes": self.dist.world_size,
            "torch_version": torch.__version__,
            "created": datetime.now().isoformat(timespec="seconds"),
        }

    def _append_metrics(self, record: dict[str, Any]) -> None:
        path = self.run_dir / "metrics.jsonl"
        previous = path.read_text() if path.exists() else ""
        atomic_write_text(path, previous + json.dumps(record) + "\n")

    def _trim_metrics(self, completed_epochs: int) -> None:
        """Drop lines of epochs the checkpoint does not cover (written just before an interruption)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["epoch"] <= completed_epochs]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _save(self, best: bool = False) -> None:
        """last.pt (and best.pt): every process contributes its RNG state, rank 0 writes."""
        rng = self.dist.gather(capture_rng_state())
        names = ["last.pt", "best.pt"] if best else ["last.pt"]
        self.dist.run_on_main(lambda: self._write_checkpoints(self._checkpoint(rng), names))

    def _checkpoint(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        return {
            "instseg_version": instseg.__version__,
            "model": self.model_init,
            "plugins": self.plugins,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": asdict(cfg),
            "epoch": self.epoch,
            "step": self.step,
            "best_sbd": self.best_sbd,
            "metrics": self.last,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "training": {  # what --resume needs beyond the weights
                "epoch_step": self.epoch_step,
                "epoch_done": self.epoch_done,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.dist.world_size,
                "accumulate": cfg.accumulate,
                "batch_size": cfg.batch_size,
                "epoch_stats": asdict(self.stats),
                "nonfinite_streak": self.nonfinite_streak,
                "best_epoch": self.best_epoch,
                "best": self.best,
                "seconds": self._elapsed(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
            },
        }

    def _write_checkpoints(self, payload: dict[str, Any], names: list[str]) -> None:
        for name in names:
            path = self.run_dir / name
            try:
                save_checkpoint(path, payload)
            except OSError as exc:
                raise TrainingError(f"could not write {path} ({exc.strerror or exc}); "
                                    f"the previous {name}, if any, is intact") from exc

    # -- console ---------------------------------------------------------------------
    def _announce(self) -> None:
        cfg = self.config
        n_params = sum(p.numel() for p in self.model.parameters())
        world = self.dist.world_size
        scale = (f"{world} processes ({'nccl' if self.device.is_cuda else 'gloo'}{', SyncBatchNorm' if cfg.sync_bn else ''}); "
                 if world > 1 else "")
        self.console.print(
            f"[bold]instseg train[/] {cfg.model} ({n_params / 1e6:.2f} M params) on {self.device.describe()}; {scale}"
            f"global batch {world * cfg.accumulate * cfg.batch_size} = {world} x accumulate {cfg.accumulate} x "
            f"batch {cfg.batch_size}; data {cfg.data} {len(self.train_set)}/{len(self.val_set)} images at "
            f"{cfg.image_size}px -> {self.run_dir}")
        if self.resumed_from:
            self.console.print(f"resuming {self.resumed_from}: epoch {self.epoch}, step {self.epoch_step}/"
                               f"{self.steps_per_epoch} of the epoch")
        if cfg.compile:
            self.console.print("torch.compile: the first steps compile the model and are slow")

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False, disable=not self.dist.is_main)


def resume_config(checkpoint: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The configuration a run resumes with: its saved one, changed only in how it runs.

    Options that change what is computed (learning rate, epochs, data, ...) would make the
    resumed run differ from the one that was interrupted, so they are refused.
    """
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in RESUME_OVERRIDES)
        given = ", ".join(f"--{name.replace('_', '-')}" for name in refused)
        raise ConfigError(f"--resume continues {Path(checkpoint['path']).parent} with its saved options; "
                          f"only {allowed} may change (given: {given})")
    try:
        config = TrainConfig(**{**checkpoint["config"], **overrides})
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint['path']}: its saved options do not fit this instseg ({exc})") from exc
    config.validate()
    return config
