"""The typed state of a training run, and its symmetric `checkpoint()` / `restore()`.

What a checkpoint file holds is `instseg.checkpoint.Checkpoint`; this module owns its
`training` entry: the position in the epoch, the batch layout, running epoch sums, best
epoch, wall time, grad scaler and RNG states - what `--resume` needs beyond the weights and
the optimizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instseg.checkpoint import Checkpoint, ModelRecord
from instseg.errors import CheckpointError, ConfigError
from instseg.train.distributed import DistContext


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


@dataclass(frozen=True)
class BatchLayout:
    """How each optimizer step is made; a resumed run must keep the global batch and the epoch."""

    world_size: int
    accumulate: int
    batch_size: int
    steps_per_epoch: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.accumulate * self.batch_size

    def check_resumable(self, saved: "BatchLayout", path: str) -> None:
        if saved.global_batch != self.global_batch:
            raise ConfigError(
                f"{path}: the run trained with {saved.world_size} process(es) x accumulate {saved.accumulate} x batch "
                f"{saved.batch_size}; resuming needs the same global batch ({saved.global_batch}): choose "
                f"--accumulate so that processes x accumulate = {saved.world_size * saved.accumulate} "
                f"(now {self.world_size} x {self.accumulate})")
        if saved.steps_per_epoch != self.steps_per_epoch:
            raise ConfigError(f"{path}: the run had {saved.steps_per_epoch} steps per epoch, the data now gives "
                              f"{self.steps_per_epoch}: the training data changed")


@dataclass
class TrainingState:
    """Where a run is: position, running sums, best and last validation, wall time so far."""

    epoch: int = 1
    epoch_step: int = 0  # optimizer steps done in this epoch
    step: int = 0  # optimizer steps done in the run
    epoch_done: bool = False  # this epoch's validation and checkpoint are written
    stats: EpochStats = field(default_factory=EpochStats)
    nonfinite_streak: int = 0
    best_sbd: float = -1.0
    best_epoch: int = 0
    best: dict[str, dict[str, float]] = field(default_factory=dict)
    last: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the run up to the last save

    def next_epoch(self) -> None:
        self.epoch, self.epoch_step, self.stats, self.epoch_done = self.epoch + 1, 0, EpochStats(), False

    def record_validation(self, metrics: dict[str, dict[str, float]]) -> bool:
        """Store an epoch's validation; True when its SBD is the best so far."""
        self.last = metrics
        improved = metrics["sbd"]["mean"] > self.best_sbd
        if improved:
            self.best_sbd, self.best_epoch, self.best = metrics["sbd"]["mean"], self.epoch, metrics
        self.epoch_done = True
        return improved

    def checkpoint(self, *, layout: BatchLayout, model: ModelRecord, plugins: dict[str, str],
                   config: dict[str, Any], weights: dict[str, Any], optimizer: dict[str, Any],
                   scheduler: dict[str, Any], scaler: dict[str, Any], rng: list[dict[str, Any]]) -> Checkpoint:
        """The run's checkpoint; `restore` reads exactly this back."""
        training = {
            "epoch_step": self.epoch_step,
            "epoch_done": self.epoch_done,
            "steps_per_epoch": layout.steps_per_epoch,
            "world_size": layout.world_size,
            "accumulate": layout.accumulate,
            "batch_size": layout.batch_size,
            "epoch_stats": asdict(self.stats),
            "nonfinite_streak": self.nonfinite_streak,
            "best_epoch": self.best_epoch,
            "best": self.best,
            "seconds": self.seconds,
            "scaler": scaler,
            "rng": rng,
        }
        return Checkpoint(model=model, state_dict=weights, config=config, plugins=plugins, epoch=self.epoch,
                          step=self.step, best_sbd=self.best_sbd, metrics=self.last, optimizer=optimizer,
                          scheduler=scheduler, training=training)

    @staticmethod
    def finished(checkpoint: Checkpoint) -> bool:
        """Whether a checkpoint ends its run: the last epoch validated and saved."""
        training = checkpoint.training or {}
        return bool(training.get("epoch_done")) and checkpoint.epoch == checkpoint.config.get("epochs")

    @classmethod
    def restore(cls, checkpoint: Checkpoint) -> tuple["TrainingState", BatchLayout, dict[str, Any]]:
        """The state, batch layout and scaler / RNG states a `payload` holds; a finished epoch
        resumes at the start of the next one."""
        try:
            training = checkpoint.training
            state = cls(epoch=checkpoint.epoch, epoch_step=training["epoch_step"], step=checkpoint.step,
                        epoch_done=training["epoch_done"], stats=EpochStats(**training["epoch_stats"]),
                        nonfinite_streak=training["nonfinite_streak"], best_sbd=checkpoint.best_sbd,
                        best_epoch=training["best_epoch"], best=training["best"], last=checkpoint.metrics,
                        seconds=training["seconds"])
            layout = BatchLayout(training["world_size"], training["accumulate"], training["batch_size"],
                                 training["steps_per_epoch"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{checkpoint.path or 'checkpoint'}: its training state is incomplete "
                                  f"({type(exc).__name__}: {exc})") from exc
        if state.epoch_done:
            state.next_epoch()
        return state, layout, {"scaler": training.get("scaler"), "rng": training["rng"]}
