"""The Trainer: one explicit loop for every registered model, on one device or many, that never loses work.

The parts live beside it: `rundir.RunDirectory` owns the run's files and disk checks,
`state.TrainingState` is what a checkpoint holds (symmetric save / restore), and
`reporting.TrainingReporter` is the console. This module builds data, model, loss and
optimizer from a `TrainConfig` and runs the epochs.

Scale: under torchrun every process runs this same code on its share of each global batch
(`GlobalBatchSampler`) inside DistributedDataParallel; validation images are split across the
processes and their scores gathered. Survive: SIGINT / SIGTERM finish the current optimizer
step, save last.pt with the position in the epoch and every RNG state, and `--resume RUN_DIR`
continues from exactly there; a non-finite loss skips its step.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from instseg import limits
from instseg.checkpoint import Checkpoint, ModelRecord
from instseg.data import build_datasets, estimate_mean_std, estimate_object_size
from instseg.device import ONEDNN_NHWC_MIN_CHANNELS, DeviceChoice, channels_last_hazard, check_training_device, resolve_device
from instseg.errors import CheckpointError, ConfigError, TrainingError
from instseg.instances.clustering import AUTO, ClusterParams
from instseg.io.microscopy import Reading
from instseg.metrics.scores import summarize
from instseg.models.factory import model_from_record
from instseg.models.registry import get_registry, plugin_requirements
from instseg.models.weights import load_weights
from instseg.objectives import check_config
from instseg.predict.evaluation import evaluate_dataset, save_epoch_pictures
from instseg.train.cluster_choice import choose_for_run
from instseg.train.config import TrainConfig, resume_config
from instseg.train.distributed import DistContext, GlobalBatchSampler
from instseg.train.optim import build_optimizer, build_scheduler
from instseg.train.reporting import TrainingReporter
from instseg.train.rundir import RunDirectory, config_record
from instseg.train.seeding import capture_rng_state, restore_rng_state, seed_everything, seed_worker, stream_seed
from instseg.train.signals import GracefulStop
from instseg.train.state import BatchLayout, StepResult, TrainingState, TrainResult
from instseg.train.tensorboard import TensorBoardLog

__all__ = ["GracefulStop", "TrainResult", "Trainer", "resume_config", "seed_worker"]

log = logging.getLogger(__name__)


class Trainer:
    """Builds data, model, loss and optimizer from a TrainConfig and runs the epochs.

    `resume` is a checkpoint from `load_resume_checkpoint`: the run continues in its own
    directory from the step it stopped at. `dist` describes a torchrun launch (read from the
    environment by default).
    """

    def __init__(self, config: TrainConfig, console: Console | None = None, *,
                 dist: DistContext | None = None, resume: Checkpoint | None = None) -> None:
        config.validate()
        self.objective = check_config(config)  # before any work: options that do not fit the objective fail at once
        self.config = config
        self.dist = dist or DistContext.from_env()
        self.report = TrainingReporter(console or Console(stderr=True), self.dist.is_main)
        self.device: DeviceChoice = resolve_device(
            config.device, amp=config.amp, local_rank=self.dist.local_rank if self.dist.enabled else None,
            cpu_amp=True)
        check_training_device(self.device, sync_bn=config.sync_bn and self.dist.enabled, compile=config.compile)
        self.dist.start(self.device.device)
        seed_everything(config.seed)
        self._build_datasets()
        self._build_model(initial_weights=resume is None)  # a resumed run takes its weights from last.pt
        self._build_optimization()
        self._build_loaders()
        self._build_schedule()
        seed_everything((config.seed + self.dist.rank) % 2**32)  # model init is identical everywhere; data randomness is not
        self.cluster = ClusterParams.from_config(asdict(config))
        self.state = TrainingState()
        self.resumed_from: str | None = None
        self._clock = time.perf_counter()
        if resume is None:
            self.run = RunDirectory(self.dist.run_on_main(self._new_run_dir))
        else:
            self.run = RunDirectory(Path(resume.path).parent)
            self._restore(resume)
        weight_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        self.dist.run_on_main(lambda: self.run.check_disk(weight_bytes))
        self.tensorboard = (TensorBoardLog(self.run_dir / "tensorboard") if config.tensorboard and self.dist.is_main
                            else None)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def step(self) -> int:
        return self.state.step

    # -- construction ----------------------------------------------------------------
    def _build_datasets(self) -> None:
        cfg = self.config
        self.train_set, self.val_set = build_datasets(
            cfg.data, image_size=cfg.image_size, seed=cfg.seed, train_size=cfg.train_size, val_size=cfg.val_size,
            val_split=cfg.val_split, val_list=cfg.val_list, augment=cfg.augment, scale=cfg.scale,
            zoom=tuple(cfg.zoom), photometric=cfg.photometric, reading=Reading.of(cfg))
        largest = max(dataset.verify() for dataset in (self.train_set, self.val_set))
        if largest > cfg.max_instances:  # the count target is normalised by it, never clipped
            self.report.note(f"--max-instances raised from {cfg.max_instances} to {largest}: the largest count in the data")
            cfg.max_instances = largest
        self.mean, self.std = estimate_mean_std(self.train_set)
        self.object_size = estimate_object_size(self.train_set, cfg.image_size, cfg.scale)

    def _build_model(self, initial_weights: bool) -> None:
        """The model (`self.model`, what checkpoints hold) and what training calls (`self.net`):
        the same module, wrapped in DDP under torchrun and compiled with --compile.
        `initial_weights`: start from the `--weights` file."""
        cfg = self.config
        spec = get_registry().model_spec(cfg.model)
        self.model_record = replace(ModelRecord.from_config(cfg, self.mean, self.std, self.object_size), name=spec.name)  # alias resolved
        try:
            model = model_from_record(self.model_record).to(self.device.device)
        except (ValueError, TypeError, RuntimeError) as exc:  # option values the architecture refuses
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"--model {spec.name}: cannot be built with these options ({first})") from exc
        if cfg.weights and initial_weights:
            self.report.note(load_weights(model, spec.name, cfg.weights).summary())
        self.plugins = plugin_requirements(spec.name, cfg.backbone)
        if self.device.is_cuda:
            torch.backends.cudnn.benchmark = True  # training sizes are fixed: let cuDNN pick its fastest kernels
        # channels-last (NHWC) suits cuDNN and oneDNN alike: measured ~14% faster on a 2-core CPU too
        hazard = None if self.device.is_cuda else channels_last_hazard(model)
        self.memory_format = torch.contiguous_format if hazard else torch.channels_last
        if hazard:
            self.report.note(f"channels-last off: {hazard}, under the {ONEDNN_NHWC_MIN_CHANNELS} that oneDNN's "
                             "NHWC weight gradient needs on the CPU (oneDNN#6035)")
        model = model.to(memory_format=self.memory_format)
        if self.dist.enabled and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model: nn.Module = model
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            self.ddp = DistributedDataParallel(model, device_ids=[self.device.device.index] if self.device.is_cuda else None)
        net = self.ddp or model
        self.net: nn.Module = torch.compile(net) if cfg.compile else net

    def _build_optimization(self) -> None:
        cfg = self.config
        self.loss_fn = self.objective.loss(cfg)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.amp_dtype == torch.float16)

    def _build_loaders(self) -> None:
        cfg = self.config
        self.train_sampler = GlobalBatchSampler(
            self.train_set, batch_size=cfg.batch_size, accumulate=cfg.accumulate,
            num_replicas=self.dist.world_size, rank=self.dist.rank, seed=cfg.seed)
        self.steps_per_epoch = self.train_sampler.steps_per_epoch
        self.loader_generator = torch.Generator()
        self.workers = limits.at_most_cpus(cfg.workers)
        self.train_loader = DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=self.train_sampler, num_workers=self.workers,
            worker_init_fn=seed_worker, generator=self.loader_generator, pin_memory=self.device.is_cuda,
            persistent_workers=self.workers > 0)
        self.val_share = Subset(self.val_set, range(self.dist.rank, len(self.val_set), self.dist.world_size))

    def _build_schedule(self) -> None:
        self.scheduler = build_scheduler(self.config, self.optimizer, self.steps_per_epoch)

    @property
    def layout(self) -> BatchLayout:
        return BatchLayout(self.dist.world_size, self.config.accumulate, self.config.batch_size, self.steps_per_epoch)

    def _new_run_dir(self) -> Path:
        return RunDirectory.create(self.config.out, self.model_record.name, self.config.name,
                                   self._config_record()).path

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Load everything last.pt holds, so the run continues as if it had never stopped."""
        path = checkpoint.path
        state, saved_layout, extra = TrainingState.restore(checkpoint)
        self.layout.check_resumable(saved_layout, path)
        try:
            self.model.load_state_dict(checkpoint.state_dict)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            self.scheduler.load_state_dict(checkpoint.scheduler)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: does not fit this model and optimizer ({str(exc).splitlines()[0]})") from exc
        if self.scaler.is_enabled() and extra["scaler"]:
            self.scaler.load_state_dict(extra["scaler"])
        self.state = state
        rng = extra["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            seed_everything(self.config.seed + self.dist.rank + 7919 * state.step)
            self.report.note(f"note: {path} holds the RNG states of {len(rng)} process(es), this run has "
                             f"{self.dist.world_size}: random streams are re-seeded")
        self.resumed_from = path
        if self.dist.is_main:
            self.run.trim_metrics(state.epoch - 1)

    # -- the loop --------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, state = self.config, self.state
        self._announce()
        start = self._clock = time.perf_counter()
        self.session_images, self.session_seconds = 0, 0.0
        with GracefulStop(quiet=not self.dist.is_main) as stop, self.report.progress() as progress:
            task = progress.add_task("train", total=cfg.epochs * self.steps_per_epoch, loss=float("nan"), epoch="",
                                     completed=(state.epoch - 1) * self.steps_per_epoch + state.epoch_step)
            while state.epoch <= cfg.epochs:
                state.epoch_done = False
                signum = self._train_epoch(stop, progress, task)
                if signum is None or state.epoch_step == self.steps_per_epoch:
                    self._end_epoch()
                    signum = signum or self._agreed_signal(stop)
                if signum is not None and state.epoch_done and state.epoch == cfg.epochs:
                    break  # the signal came after the last step: the run is complete, not interrupted
                if signum is not None:
                    if not state.epoch_done:
                        self._save()
                    return self._result(start, interrupted_by=signum)
                state.next_epoch()
        if cfg.cluster == AUTO:
            self.dist.run_on_main(self._choose_clustering)
        return self._result(start)

    def _choose_clustering(self) -> None:
        """`--cluster auto`: the best checkpoint scored with each method; the winner is the run's."""
        method, scores = choose_for_run(self.run_dir, self.model, self.val_set, self.device.device, self.cluster,
                                        self.config)
        self.report.note(f"clustering: {method} (validation SBD " +
                         ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) + "), saved in the run")

    def _train_epoch(self, stop: GracefulStop, progress: Progress, task: Any) -> int | None:
        """Optimizer steps from the state's position to the end of the epoch; the signal if one stopped it."""
        state = self.state
        self.model.train()
        self.train_sampler.set_epoch(state.epoch)
        self.train_sampler.set_start(state.epoch_step)
        self.loader_generator.manual_seed(stream_seed(self.config.seed, state.epoch, self.dist.rank))
        batches = iter(self.train_loader)
        t0 = time.perf_counter()
        try:
            while state.epoch_step < self.steps_per_epoch:
                result = self.train_step(itertools.islice(batches, self.config.accumulate))
                state.step += 1
                state.epoch_step += 1
                state.stats.add(result)
                if self.tensorboard is not None:
                    self.tensorboard.step(state.step, result.terms, self.optimizer.param_groups[0]["lr"])
                self.session_images += result.images
                self._check_nonfinite(result)
                progress.update(task, advance=1, epoch=f"epoch {state.epoch}/{self.config.epochs}",
                                loss=state.stats.sums.get("loss", float("nan")) / max(state.stats.steps, 1))
                signum = self._agreed_signal(stop)
                if signum is not None:
                    return signum
            return None
        finally:
            elapsed = time.perf_counter() - t0
            state.stats.seconds += elapsed
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
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
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
        state = self.state
        if result.terms is not None:
            state.nonfinite_streak = 0
            return
        state.nonfinite_streak += 1
        limit = self.config.max_nonfinite
        where = (", ".join(f"{k}={v:.4g}" for k, v in result.nonfinite.items()) if result.nonfinite
                 else "on another process")
        self.report.warn(f"epoch {state.epoch} step {state.epoch_step}: non-finite loss ({where}); step skipped "
                         f"({state.nonfinite_streak}/{limit} in a row)")
        if state.nonfinite_streak >= limit:
            self._save()
            raise TrainingError(
                f"stopped at epoch {state.epoch} step {state.epoch_step}: the loss was non-finite for {limit} steps "
                f"in a row. The weights (never updated by those steps) are in {self.run_dir / 'last.pt'}; "
                "try a lower --lr, a --grad-clip, --no-amp, or check the data")

    def _agreed_signal(self, stop: GracefulStop) -> int | None:
        """The stop signal if any process received one: all processes stop after the same step."""
        signum = int(self.dist.max(float(stop.signum or 0)))
        return signum or None

    def _elapsed(self) -> float:
        return self.state.seconds + time.perf_counter() - self._clock

    def _end_epoch(self) -> None:
        """Everything done once per epoch after its last step: validate, record, checkpoint, report."""
        cfg, state = self.config, self.state
        self.dist.average_buffers(self.model)
        train, skipped, images = state.stats.reduced(self.dist)
        improved = state.record_validation(self._validate())
        record = {
            "epoch": state.epoch, "step": state.step, "lr": self.optimizer.param_groups[0]["lr"],
            "train": train, "skipped_steps": skipped, "val": {k: v["mean"] for k, v in state.last.items()},
            "images_per_second": images / max(state.stats.seconds, 1e-9),
            "seconds": self._elapsed(),
        }
        self.dist.run_on_main(lambda: self.run.append_metrics(record))
        self.dist.run_on_main(lambda: save_epoch_pictures(
            self.run_dir, state.epoch, self.model, self.val_set, self.device.device, self.cluster, cfg.image_size,
            scale=cfg.scale))
        if self.tensorboard is not None:
            self.tensorboard.epoch(record, self.run_dir / "pictures" / f"epoch-{state.epoch:03d}.png")
        self._save(best=improved)
        self.report.epoch(state.epoch, cfg.epochs, train.get("loss", float("nan")), state.last, improved, skipped)

    def _validate(self) -> dict[str, dict[str, float]]:
        """Each process scores its share of the validation images (clustering, on the CPU,
        dominates); gathering the per-image scores gives every process the same summary."""
        share = evaluate_dataset(self.model, self.val_share, self.device.device, params=self.cluster,
                                 image_size=self.config.image_size, batch_size=self.config.batch_size,
                                 scale=self.config.scale)
        rows = sorted((row for part in self.dist.gather(share.rows) for row in part), key=lambda row: row.name)
        return summarize(row.scores for row in rows)

    def _result(self, start: float, interrupted_by: int | None = None) -> TrainResult:
        state = self.state
        if self.tensorboard is not None:
            self.tensorboard.close()
        images = int(self.dist.sum([float(self.session_images)])[0])
        return TrainResult(self.run_dir, state.best_epoch, state.best, state.last, time.perf_counter() - start,
                           images / max(self.session_seconds, 1e-9), interrupted_by, state.epoch, state.epoch_step,
                           self.steps_per_epoch)

    # -- files -----------------------------------------------------------------------
    def _config_record(self) -> dict[str, Any]:
        return config_record(asdict(self.config), self.model_record.to_payload(), self.plugins, self.device.describe(),
                             self.dist.world_size)

    def _save(self, best: bool = False) -> None:
        """last.pt (and best.pt): every process contributes its RNG state, rank 0 writes."""
        rng = self.dist.gather(capture_rng_state())
        self.state.seconds = self._elapsed()
        self._clock = time.perf_counter()
        checkpoint = lambda: self.state.checkpoint(  # noqa: E731 - built on rank 0 only
            layout=self.layout, model=self.model_record, plugins=self.plugins, config=asdict(self.config),
            weights={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), rng=rng)
        self.dist.run_on_main(lambda: self.run.save_checkpoints(checkpoint(), best))

    # -- console ---------------------------------------------------------------------
    def _announce(self) -> None:
        state = self.state
        self.report.announce(
            self.config, params=sum(p.numel() for p in self.model.parameters()), device=self.device.describe(),
            world=self.dist.world_size, cuda=self.device.is_cuda, train_images=len(self.train_set),
            val_images=len(self.val_set), run_dir=self.run_dir, resumed=self.resumed_from, workers=self.workers,
            position=f"epoch {state.epoch}, step {state.epoch_step}/{self.steps_per_epoch} of the epoch")
