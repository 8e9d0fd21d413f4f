"""From the outside: the installed plugin shows up in the CLI, trains, exports to ONNX and infers.

Tests using the `trained_run` fixture (conftest.py) run for both the plugin's model and its
backbone under a built-in decoder, unless they pick one.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.checkpoint import load_checkpoint
from instseg.models.factory import build_model
from instseg.data.synthetic import render_plant
from instseg.io.images import read_label_map
from instseg.io.writing import write_rgb
from instseg.runtime import OnnxRunner

DIST = "instseg-plugin-example"
runner = CliRunner()


def test_instseg_plugins_lists_it_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "instseg", "plugins", "--json"], capture_output=True,
                            text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    rows = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    mine = rows["mobilenet"]
    assert mine["distribution"] == DIST and mine["version"] == "0.1.0" and mine["status"] == "loaded"
    assert mine["hooks"] == ["register_backbones", "register_models"]
    assert mine["registered"] == ["backbone:mobilenetv2-lite", "model:mobile-unet"]


def test_instseg_models_lists_its_model_and_backbone():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["models"]}
    assert rows["mobile-unet"]["kind"] == "model" and rows["mobile-unet"]["backbone"] == "mobilenetv2-lite"
    assert rows["mobilenetv2-lite"]["kind"] == "backbone" and rows["mobilenetv2-lite"]["plugin"] == "mobilenet"
    assert rows["mobile-unet"]["params"].endswith(" M")


def test_training_records_the_plugin_it_needs(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["plugins"][DIST] == "0.1.0"
    assert [json.loads(line)["epoch"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(trained_run).plugins[DIST] == "0.1.0"


def test_checkpoint_rebuilds_the_trained_model(trained_run):
    checkpoint = load_checkpoint(trained_run / "last.pt")
    model = build_model(checkpoint)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 48, 80))
    assert out.embedding.shape == (1, checkpoint.model.embedding_dim, 48, 80)
    assert torch.equal(model.state_dict()["normalize.mean"], checkpoint.state_dict["normalize.mean"])


def test_evaluate_runs_on_the_trained_model(trained_run, tmp_path):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 2


# The plugin's own model is exported by check_onnx_parity (test_example_plugin.py): here the
# plugin's backbone under a built-in decoder, from the CLI (a dynamo export takes ~35 s).
@pytest.mark.parametrize("trained_run", ["unet-cbam+mobilenetv2-lite"], indirect=True)
def test_exports_to_onnx_and_infers_without_the_plugin(trained_run, tmp_path):
    model = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(trained_run), "--onnx", "-o", str(model)])
    assert result.exit_code == 0, result.output  # exit 1 would mean ONNX Runtime differs from PyTorch
    assert "FAILED" not in result.output and f"next: instseg infer {model}" in result.output
    assert OnnxRunner.open(model, "cpu").info.plugins[DIST] == "0.1.0"  # provenance recorded

    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(64, 64), (50, 70)]):
        write_rgb(images / f"plant{i}.png", render_plant(3, i, size, split="val")[0])
    # the graph is self-contained: inference runs with third-party plugins disabled
    env = {**os.environ, "INSTSEG_DISABLE_PLUGINS": "1"}
    env.pop("INSTSEG_PLUGINS", None)
    infer = subprocess.run([sys.executable, "-m", "instseg", "infer", str(model), str(images), "--out",
                            str(tmp_path / "out"), "--provider", "cpu"], capture_output=True, text=True, env=env)
    assert infer.returncode == 0, infer.stderr
    assert read_label_map(tmp_path / "out" / "plant1_label.png").shape == (50, 70)
    assert (tmp_path / "out" / "plant0_overlay.png").is_file()
