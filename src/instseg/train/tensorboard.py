"""`instseg train --tensorboard`: loss terms and learning rate at every step, validation metrics
and the epoch picture at every epoch, in `<run>/tensorboard/` (`tensorboard --logdir runs`).

Only rank 0 writes. PyTorch's SummaryWriter queues events and writes them from its own thread,
so a step costs a few scalar appends; the epoch picture goes in as the PNG bytes already on disk,
never decoded and encoded again (the overhead is measured in docs/training.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
            self.writer.file_writer.add_summary(png_summary(PICTURE_TAG, picture), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def png_summary(tag: str, path: Path) -> Any:
    """An image summary holding a PNG file's own bytes (TensorBoard shows PNGs as they are)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    with Image.open(path) as image:  # the header only: the pixels are not decoded
        width, height = image.size
        channels = len(image.getbands())
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=path.read_bytes())
    return Summary(value=[Summary.Value(tag=tag, image=image)])
