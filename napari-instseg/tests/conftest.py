"""Fixtures: a real (untrained) instseg model, a 1024 px plant, and napari without a screen.

Qt's `offscreen` platform needs no display server, only pip packages; it has no OpenGL,
though, and napari asks the driver two questions when it draws an image (its float-texture
extensions and its largest texture) that then fail. These tests check widgets, layers and
threads, not pixels, so under `offscreen` napari is told what a minimal OpenGL 2 driver would
answer - exactly what napari's own tests do for the first question. On a real or virtual
screen (`xvfb-run`) the driver answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt creates the QApplication

from instseg.checkpoint import Checkpoint, ModelRecord, save_checkpoint  # noqa: E402
from instseg.data.synthetic import render_plant  # noqa: E402
from instseg.testing import tiny_model  # noqa: E402

MINIMAL_GL_TEXTURE_SIZES = (2048, 256)  # OpenGL 2's guaranteed minimums are smaller still


@pytest.fixture(autouse=True)
def _napari_without_opengl(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ["QT_QPA_PLATFORM"] == "offscreen":
        monkeypatch.setattr("napari._vispy.layers.image.get_gl_extensions", lambda: "")
        monkeypatch.setattr("napari._vispy.layers.image.get_max_texture_sizes", lambda: MINIMAL_GL_TEXTURE_SIZES)


def foreground_network() -> torch.nn.Module:
    """`instseg.testing.tiny_model("unet")` whose semantic head calls every pixel foreground,
    so that an untrained model still finds instances (k-means on its random embeddings)."""
    network = tiny_model("unet")
    with torch.no_grad():
        network.semantic_head.conv.weight.zero_()
        network.semantic_head.conv.bias.copy_(torch.tensor([-4.0, 4.0]))
    return network


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding best.pt, saved the way instseg's own tests save one."""
    run = tmp_path_factory.mktemp("run")
    record = ModelRecord(name="unet", embedding_dim=8, max_instances=20, mean=(0.5,) * 3, std=(0.25,) * 3, width=4)
    network = foreground_network()
    save_checkpoint(run / "best.pt", Checkpoint(model=record, state_dict=network.state_dict(),
                                                config={"image_size": 64}, plugins={"instseg": "0"}, epoch=1, step=1))
    return run


@pytest.fixture(scope="session")
def plant_1024() -> np.ndarray:
    """A 1024 x 1024 RGB synthetic rosette (uint8)."""
    return render_plant(0, 0, 1024, split="test")[0]
