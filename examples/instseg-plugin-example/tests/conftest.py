"""Every test here sees instseg's built-ins plus this plugin - and nothing else installed.

instseg's own test suite disables third-party plugins (INSTSEG_DISABLE_PLUGINS=1); when
both suites run in one pytest process, `only_plugins` re-enables exactly this distribution
per module and restores the environment afterwards.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.testing import only_plugins

DIST = "instseg-plugin-example"
TINY = ["--width", "4", "--image-size", "64", "--epochs", "1", "--train-size", "4", "--val-size", "2",
        "--batch-size", "2"]
# The two ways users train with this plugin: its own model, and its backbone under a built-in decoder.
TRAIN_VARIANTS = {
    "mobile-unet": ["--model", "mobile-unet"],
    "unet-cbam+mobilenetv2-lite": ["--model", "unet-cbam", "--backbone", "mobilenetv2-lite"],
}


@pytest.fixture(autouse=True, scope="module")
def _only_this_plugin():
    with only_plugins(DIST):
        yield


@pytest.fixture(scope="session", params=list(TRAIN_VARIANTS))
def trained_run(request, tmp_path_factory):
    """A run directory trained for two steps with `instseg train` (shared by the CLI,
    checkpoint, export and infer tests)."""
    out = tmp_path_factory.mktemp("runs")
    with only_plugins(DIST):
        result = CliRunner().invoke(app, ["train", *TRAIN_VARIANTS[request.param], *TINY,
                                          "--out", str(out), "--name", "run"])
    assert result.exit_code == 0, result.output
    return out / "run"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests share the CPU with other pytest workers: one torch thread, no OpenMP oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
