"""Training options (torch-free, so the CLI can show their defaults without importing torch)."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instseg import limits
from instseg.errors import CheckpointError, ConfigError
from instseg.instances.clustering import AUTO, CLUSTER_METHODS
from instseg.io.microscopy import NORMALIZE, valid_channels

PHOTOMETRIC = ("colour", "microscopy")  # --photometric: colour jitter and blur; or also gamma, dimming, noise, inversion, stain

if TYPE_CHECKING:
    from instseg.checkpoint import Checkpoint

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW"}  # --optimizer -> torch.optim class
SCHEDULERS = ("cosine", "constant")
RESUME_OVERRIDES = ("device", "workers", "compile", "max_nonfinite", "accumulate", "tensorboard")  # how a run runs, not what it computes


@dataclass(frozen=True)
class LossWeights:
    """The discriminative objective's loss terms and their default weights (defined here, torch-free,
    so that `--loss-weight`'s help and the run's config read the same defaults the loss uses)."""

    discriminative: float = 1.0
    cross_entropy: float = 1.0
    dice: float = 1.0
    count: float = 1.0
    instance: float = 0.0  # the instance-level Dice term (off unless a recipe or --loss-weight sets it)


DISCRIMINATIVE_WEIGHTS = asdict(LossWeights())


@dataclass
class TrainConfig:
    """Every option of a training run; saved as config.json. Defaults: ~5 min on 2 CPU cores."""

    preset: str | None = None  # the named recipe whose defaults this run started from (presets.py)
    model: str = "unet-cbam"
    backbone: str | None = None
    width: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # from --model-option, see parse_model_options
    weights: str | None = None  # a local state dict for the backbone (--weights)
    objective: str = "discriminative"  # the registered instance objective (instseg.objectives)
    embedding_dim: int = 32
    position_scale: float = 0.0  # pixels per embedding unit of the (row, column) channels; 0 = off
    counter_pooling: str = "image"  # what the counter head pools over (limits.COUNTER_POOLING)
    max_instances: int = 20
    data: str = "synthetic"
    image_size: int = 128  # working size (shorter side), or the side of the training crops with `scale`
    scale: float | None = None  # fixed resize factor: objects keep their pixel size (microscopy)
    normalize: str = "fixed"  # intensities scaled by dtype, or per image by percentiles (io.microscopy)
    channels: tuple[int, ...] | None = None  # the channels of each file that feed the network (None: grey / RGB)
    train_size: int = 384  # synthetic images per epoch
    val_size: int = 32  # synthetic validation images
    val_split: float = 0.2  # file datasets: seeded fraction of images for validation
    val_list: str | None = None  # file datasets: stems of the validation images (overrides val_split)
    augment: bool = True  # file datasets: paired flips, rotations, zoom, color jitter, blur
    zoom: tuple[float, float] = (0.75, 1.33)  # file datasets: random zoom range, log-uniform, around the working scale
    photometric: str = "colour"  # file datasets: intensity augmentation (PHOTOMETRIC, data.photometric)
    epochs: int = 6
    batch_size: int = 8  # per process; the global batch is batch_size x accumulate x processes
    accumulate: int = 1  # micro-batches whose gradients add up to one optimizer step
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 0.5
    grad_clip: float = 5.0
    delta_v: float = 0.5
    delta_d: float = 1.5
    loss_weights: dict[str, float] = field(default_factory=dict)  # over the objective's own (objectives.check_config)
    cluster: str = AUTO  # the run's prediction default (auto: measured on validation, cluster_choice.py)
    device: str = "auto"
    amp: bool = True
    compile: bool = False  # torch.compile the training forward
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    tensorboard: bool = False  # log to <run>/tensorboard/ (rank 0; needs the tensorboard package)
    workers: int = 0
    seed: int = 0
    out: str = "runs"
    name: str | None = None  # run directory name; default <model>-<timestamp>

    def validate(self) -> None:
        bad = [f"{key}={getattr(self, key)!r} (expected {expected})"
               for key, (ok, expected) in self._checks().items() if not ok]
        if bad:
            raise ConfigError(f"invalid training option(s): {'; '.join(bad)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer}: choose from {', '.join(OPTIMIZERS)}")
        if self.cluster not in (AUTO, *CLUSTER_METHODS):
            raise ConfigError(f"--cluster {self.cluster}: choose from {', '.join((AUTO, *CLUSTER_METHODS))}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler}: choose from {', '.join(SCHEDULERS)}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'instseg[tensorboard]'")

    def _checks(self) -> dict[str, tuple[bool, str]]:
        """Each option: (whether its value is valid, the rule as the error message states it)."""
        return {
            "epochs": (limits.is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            "batch_size": (limits.is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            "image_size": (limits.is_int_in(self.image_size, limits.IMAGE_SIZE), f"{limits.describe(limits.IMAGE_SIZE)} pixels"),
            # the checkpoint's rule, so that training never writes a run that loading refuses
            "scale": (self.scale is None or limits.is_number_in(self.scale, limits.scale_range(self.image_size)),
                      f"{limits.describe(limits.scale_range(self.image_size))} at image_size {self.image_size}"),
            "lr": (limits.is_number(self.lr) and self.lr > 0, "a number > 0"),
            "weight_decay": (limits.is_number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            "warmup_epochs": (limits.is_number(self.warmup_epochs) and self.warmup_epochs >= 0, "a number >= 0"),
            "delta_v": (limits.is_number(self.delta_v) and self.delta_v > 0, "a number > 0"),
            "delta_d": (limits.is_number(self.delta_d) and self.delta_d > 0, "a number > 0"),
            "embedding_dim": (limits.is_int_in(self.embedding_dim, limits.EMBEDDING_DIM),
                              limits.describe(limits.EMBEDDING_DIM)),
            "position_scale": (limits.is_number(self.position_scale) and self.position_scale >= 0
                               and (not self.position_scale or self.embedding_dim >= 2),
                               "a number >= 0, and embedding_dim >= 2 when not 0"),
            "max_instances": (limits.is_int_in(self.max_instances, limits.MAX_INSTANCES),
                              limits.describe(limits.MAX_INSTANCES)),
            "width": (self.width is None or limits.is_int_in(self.width, limits.WIDTH), limits.describe(limits.WIDTH)),
            "train_size": (limits.is_int(self.train_size) and self.train_size >= 1, "an integer >= 1"),
            "val_size": (limits.is_int(self.val_size) and self.val_size >= 1, "an integer >= 1"),
            "workers": (limits.is_int(self.workers) and self.workers >= 0, "an integer >= 0"),
            "seed": (limits.is_int_in(self.seed, limits.SEED), limits.describe(limits.SEED)),
            "grad_clip": (limits.is_number(self.grad_clip) and self.grad_clip >= 0, "a number >= 0"),
            "val_split": (limits.is_number(self.val_split) and 0 < self.val_split < 1, "between 0 and 1"),
            "accumulate": (limits.is_int(self.accumulate) and self.accumulate >= 1, "an integer >= 1"),
            "max_nonfinite": (limits.is_int(self.max_nonfinite) and self.max_nonfinite >= 1, "an integer >= 1"),
            "zoom": (len(self.zoom) == 2 and all(limits.is_number_in(z, limits.ZOOM) for z in self.zoom)
                     and self.zoom[0] <= self.zoom[1], f"MIN,MAX within {limits.describe(limits.ZOOM)}, MIN <= MAX"),
            # which terms exist is the objective's to say (objectives.check_config)
            "loss_weights": (all(limits.is_number(v) and v >= 0 for v in self.loss_weights.values()),
                             "each term a number >= 0"),
            "normalize": (self.normalize in NORMALIZE, f"one of {', '.join(NORMALIZE)}"),
            "counter_pooling": (self.counter_pooling in limits.COUNTER_POOLING,
                                f"one of {', '.join(limits.COUNTER_POOLING)}"),
            "photometric": (self.photometric in PHOTOMETRIC, f"one of {', '.join(PHOTOMETRIC)}"),
            "channels": (self.channels is None or valid_channels(self.channels), "1 to 3 channel indices from 0"),
            "name": (self.name is None or is_run_name(self.name),
                     "one folder name: no '/', not '.' or '..', not starting with '.'"),
        }


def is_run_name(name: str) -> bool:
    """A run name is one path component that makes a visible folder inside --out, nothing else."""
    separators = {"/", "\\", "\0", os.sep, os.altsep or "/"}
    return bool(name.strip()) and not name.startswith(".") and not any(sep in name for sep in separators)


BACKBONE_PREFIX = "backbone."


def parse_value(text: str) -> Any:
    """A command-line value: true/false, none, an int, a float, a comma list (a tuple) or a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part.strip())
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text.strip()


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` items -> create_model keyword arguments.

    `KEY=VALUE` goes to the architecture's decoder (e.g. `coord_conv=true`, `skip_stride=none`);
    `backbone.KEY=VALUE` to its backbone (e.g. `backbone.output_stride=16`), collected under
    `backbone_kwargs`.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        to_backbone = key.startswith(BACKBONE_PREFIX)
        name = key[len(BACKBONE_PREFIX):] if to_backbone else key
        if not sep or not name.isidentifier():
            raise ConfigError(f"--model-option {item!r}: expected KEY=VALUE or backbone.KEY=VALUE")
        target = options.setdefault("backbone_kwargs", {}) if to_backbone else options
        target[name] = parse_value(value)
    return options


def parse_loss_weights(items: list[str], base: dict[str, float] | None = None,
                       terms: dict[str, float] = DISCRIMINATIVE_WEIGHTS) -> dict[str, float]:
    """`NAME=VALUE` items (`--loss-weight instance=1`) on top of `base` (a preset's weights; None:
    the objective's defaults `terms`), so that naming one term keeps the recipe's others."""
    weights = {**terms, **(base or {})}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or name.strip() not in terms or not math.isfinite(number) or number < 0:
            raise ConfigError(f"--loss-weight {item!r}: expected NAME=VALUE with NAME one of {', '.join(terms)} "
                              "and VALUE a number >= 0")
        weights[name.strip()] = number
    return weights


def parse_zoom(text: str) -> tuple[float, float]:
    """`--zoom MIN,MAX` (e.g. 0.5,2)."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--zoom {text!r}: expected MIN,MAX, e.g. 0.5,2") from None
    return low, high


def resume_config(checkpoint: "Checkpoint", overrides: dict[str, Any]) -> TrainConfig:
    """The configuration a run resumes with: its saved one, changed only in how it runs.

    Options that change what is computed (learning rate, epochs, data, ...) would make the
    resumed run differ from the one that was interrupted, so they are refused.
    """
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in RESUME_OVERRIDES)
        given = ", ".join(f"--{name.replace('_', '-')}" for name in refused)
        raise ConfigError(f"--resume continues {Path(checkpoint.path).parent} with its saved options; "
                          f"only {allowed} may change (given: {given})")
    try:
        config = TrainConfig(**{**checkpoint.config, **overrides})
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint.path}: its saved options do not fit this instseg ({exc})") from exc
    config.validate()
    return config
