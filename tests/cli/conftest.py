"""The CLI lane: the trained tiny run (with images to predict)
that test_infer.py and test_quantize.py share - trained once per session."""

from __future__ import annotations

import pytest
from PIL import Image

from cli_support import SIZES, invoke
from instseg.data.synthetic import render_plant
from instseg.io.writing import write_rgb

# A few epochs on synthetic leaves: enough for foreground and several instances per plant.
TRAIN = ["--model", "unet-cbam", "--width", "8", "--image-size", "64", "--epochs", "4", "--train-size", "48",
         "--val-size", "8", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A unet-cbam run of `instseg train` (4 epochs at 64 px), trained once per session."""
    out = tmp_path_factory.mktemp("runs")
    result = invoke("train", *TRAIN, "--out", out, "--name", "run")
    assert result.exit_code == 0, result.output
    return out / "run"


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Synthetic plants of odd sizes (SIZES) and a greyscale photo (imageio repeats grey into RGB)."""
    folder = tmp_path_factory.mktemp("images")
    for i, size in enumerate(SIZES):
        write_rgb(folder / f"plant{i}.png", render_plant(7, i, size, split="val")[0])
    Image.fromarray(render_plant(7, 9, (72, 72), split="val")[0][..., 1]).save(folder / "grey.png")
    return folder
