"""The optimizer and learning-rate schedule a TrainConfig names."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from instseg.train.config import OPTIMIZERS, TrainConfig


def build_optimizer(config: TrainConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    optimizer = getattr(torch.optim, OPTIMIZERS[config.optimizer])
    return optimizer(parameters, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(total_steps: int, warmup_steps: int, kind: str) -> Callable[[int], float]:
    """Linear warm-up, then constant or cosine down to 2% of the peak at the last step."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total, warmup, config.scheduler))
