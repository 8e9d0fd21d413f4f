"""The PyTorch runner of the prediction pipeline (see `instseg.predict.pipeline` for the protocol)."""

from __future__ import annotations

import os

import numpy as np
import torch

from instseg.checkpoint import Checkpoint
from instseg.device import DeviceChoice, resolve_device
from instseg.instances.clustering import ClusterParams
from instseg.io.microscopy import FIXED, Reading
from instseg.predict.tiling import default_tiling


class TorchRunner:
    """A model on a device: numpy images in, numpy outputs out. Built from a checkpoint
    (`from_checkpoint`) or around an in-memory model (training's validation).

    The model normalises and pads internally, so any H x W is accepted (`multiple_of` 1).
    `scale`: the run's fixed resize factor (None: shorter side -> `image_size`).
    """

    multiple_of = 1
    static_size = None

    def __init__(self, model: torch.nn.Module, device: DeviceChoice, image_size: int, cluster: ClusterParams,
                 description: str = "", checkpoint: Checkpoint | None = None, scale: float | None = None) -> None:
        # channels-last as in training: the same weights give the same numbers in validation, evaluate
        # and predict (a loaded model was contiguous, enough to flip k-means on a weak model), and the
        # convolutions run ~14% faster on a CPU
        self.model = model.to(device.device, memory_format=torch.channels_last).eval()
        self.device = device
        self.image_size = image_size
        self.tile, self.tile_overlap = default_tiling(self.image_size)
        self.scale = scale
        self.cluster = cluster
        self.max_instances = model.max_instances
        self.description = description
        self.config: dict = checkpoint.config if checkpoint else {}  # the run's training options
        self.checkpoint_path: str | None = checkpoint.path if checkpoint else None
        self.epoch: int | None = checkpoint.epoch if checkpoint else None
        self.object_size: float | None = checkpoint.model.object_size if checkpoint else None
        self.reading: Reading = Reading.of(checkpoint.model) if checkpoint else FIXED  # channels, intensity scaling

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto") -> "TorchRunner":
        from instseg.models.factory import load_trained

        trained = load_trained(path)
        return cls(trained.model, resolve_device(device), trained.image_size, trained.cluster, trained.description,
                   trained.checkpoint, trained.scale)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device.device)
        with torch.autocast(self.device.device.type, dtype=self.device.amp_dtype or torch.float32,
                            enabled=self.device.amp_dtype is not None):
            output = self.model(x)
        return tuple(t.float().cpu().numpy() for t in output)
