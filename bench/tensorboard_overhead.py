"""What `instseg train --tensorboard` costs, beside what it logs about, in one process (so all
three figures see the same load):

    python bench/tensorboard_overhead.py runs/<run>/pictures/epoch-001.png

- `TensorBoardLog.step`: the 8 loss terms and the learning rate of one optimizer step;
- `TensorBoardLog.epoch`: the validation means, the throughput and the given epoch picture, flushed;
- one fp32 training step of the default model (unet-cbam, 128 px, batch 8) for scale.

The end-to-end check is the same tiny training with and without `--tensorboard`, started
together so that both see the same load (docs/training.md gives both).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from instseg.models.registry import create_model
from instseg.train.losses import MultiTaskLoss
from instseg.train.tensorboard import TensorBoardLog

TERMS = ("loss", "disc", "var", "dist", "reg", "ce", "dice", "count")
METRICS = ("sbd", "fg_dice", "dic", "abs_dic", "ap", "ap50", "precision50", "recall50")


def time_steps(log: TensorBoardLog, calls: int) -> float:
    terms = dict.fromkeys(TERMS, 0.5)
    for step in range(100):  # warm-up
        log.step(step, terms, 1e-3)
    start = time.perf_counter()
    for step in range(100, 100 + calls):
        log.step(step, terms, 1e-3)
    return (time.perf_counter() - start) / calls


def time_epochs(log: TensorBoardLog, picture: Path, epochs: int = 5) -> float:
    record = {"val": dict.fromkeys(METRICS, 0.5), "images_per_second": 5.0}
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        log.epoch({**record, "step": epoch}, picture)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_training_step(steps: int = 3) -> float:
    model = create_model("unet-cbam", max_instances=20)
    loss_fn, optimizer = MultiTaskLoss(20), torch.optim.AdamW(model.parameters())
    images, labels = torch.rand(8, 3, 128, 128), torch.randint(0, 6, (8, 128, 128))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn(model(images), labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("picture", type=Path, help="an epoch picture (runs/<run>/pictures/epoch-NNN.png)")
    parser.add_argument("--calls", type=int, default=2000, help="step() calls timed")
    args = parser.parse_args()
    log = TensorBoardLog(Path(tempfile.mkdtemp()) / "tensorboard")
    per_step, per_epoch = time_steps(log, args.calls), time_epochs(log, args.picture)
    log.close()
    train_step = time_training_step()
    print(f"step(): {per_step * 1e6:.0f} us; epoch(): {per_epoch * 1e3:.0f} ms; a unet-cbam training step "
          f"(128 px, batch 8, fp32): {train_step * 1e3:.0f} ms; step() = {100 * per_step / train_step:.4f}% of it")


if __name__ == "__main__":
    main()
