"""`instseg train --tensorboard`: loss terms and learning rate at every step, validation metrics
and the epoch picture at every epoch, in `<run>/tensorboard/` (`tensorboard --logdir runs`).

Only rank 0 writes. PyTorch's SummaryWriter queues events and writes them from its own thread,
so a step costs a few scalar appends (the overhead is measured in docs/training.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PICTURE_TAG = "validation/pictures"  # input / embedding / prediction / ground truth, as pictures/epoch-NNN.png


class TensorBoardLog:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (TrainConfig checks)

        self.folder = folder
        self.writer = SummaryWriter(str(folder))

    def step(self, step: int, terms: dict[str, float] | None, lr: float) -> None:
        """One optimizer step: its loss terms (none when the step was skipped) and learning rate."""
        for name, value in (terms or {}).items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, record: dict[str, Any], picture: Path) -> None:
        """One epoch's metrics.jsonl record (validation means, throughput) and its picture."""
        step = record["step"]
        for name, value in record["val"].items():
            self.writer.add_scalar(f"val/{name}", value, step)
        self.writer.add_scalar("train/images_per_second", record["images_per_second"], step)
        if picture.is_file():
            with Image.open(picture) as image:
                self.writer.add_image(PICTURE_TAG, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
