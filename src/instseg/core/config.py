"""Training options (torch-free, so the CLI can show their defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from instseg.core.clustering import CLUSTER_METHODS, DEFAULT_METHOD
from instseg.errors import ConfigError

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("cosine", "constant")


def _default_loss_weights() -> dict[str, float]:
    return {"discriminative": 1.0, "cross_entropy": 1.0, "dice": 1.0, "count": 1.0}


@dataclass
class TrainConfig:
    """Every option of a training run; saved as config.json. Defaults: ~5 min on 2 CPU cores."""

    model: str = "unet-cbam"
    backbone: str | None = None
    width: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 32
    max_instances: int = 20
    data: str = "synthetic"
    image_size: int = 128
    train_size: int = 384  # synthetic images per epoch
    val_size: int = 32
    epochs: int = 12
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 0.5
    grad_clip: float = 5.0
    delta_v: float = 0.5
    delta_d: float = 1.5
    loss_weights: dict[str, float] = field(default_factory=_default_loss_weights)
    cluster: str = DEFAULT_METHOD  # clustering for validation and the run's prediction default
    device: str = "auto"
    amp: bool = True
    workers: int = 0
    seed: int = 0
    out: str = "runs"
    name: str | None = None  # run directory name; default <model>-<timestamp>

    def validate(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "image_size": 16 <= self.image_size <= 4096,
            "lr": self.lr > 0,
            "train_size": self.train_size >= 1,
            "val_size": self.val_size >= 1,
            "workers": self.workers >= 0,
            "grad_clip": self.grad_clip >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid training option(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer}: choose from {', '.join(OPTIMIZERS)}")
        if self.cluster not in CLUSTER_METHODS:
            raise ConfigError(f"--cluster {self.cluster}: choose from {', '.join(CLUSTER_METHODS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler}: choose from {', '.join(SCHEDULERS)}")
