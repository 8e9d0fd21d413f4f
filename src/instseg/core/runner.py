"""The PyTorch runner of the prediction pipeline (see `instseg.pipeline` for the protocol)."""

from __future__ import annotations

import os

import numpy as np
import torch

from instseg.core.checkpoint import build_model, load_checkpoint
from instseg.core.clustering import ClusterParams
from instseg.core.device import DeviceChoice, resolve_device


class TorchRunner:
    """A checkpoint's model on a device: numpy images in, numpy outputs out.

    The model normalises and pads internally, so any H x W is accepted (`multiple_of` 1).
    """

    multiple_of = 1
    static_size = None

    def __init__(self, model: torch.nn.Module, device: DeviceChoice, image_size: int, cluster: ClusterParams,
                 description: str = "") -> None:
        self.model = model.to(device.device).eval()
        self.device = device
        self.image_size = image_size
        self.cluster = cluster
        self.max_instances = model.max_instances
        self.description = description

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto") -> "TorchRunner":
        ckpt = load_checkpoint(path)
        config = ckpt["config"]
        return cls(build_model(ckpt), resolve_device(device), int(config["image_size"]),
                   ClusterParams.from_config(config),
                   f"{ckpt['model']['name']} from {ckpt['path']} (epoch {ckpt['epoch']})")

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device.device)
        with torch.autocast(self.device.device.type, dtype=self.device.amp_dtype or torch.float32,
                            enabled=self.device.amp_dtype is not None):
            output = self.model(x)
        return tuple(t.float().cpu().numpy() for t in output)
