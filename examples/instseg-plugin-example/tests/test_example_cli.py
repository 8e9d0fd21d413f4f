"""From the outside: the installed plugin shows up in the CLI and trains from it.

Export and inference tests go here too, on the same `trained_run` fixture (conftest.py),
which already covers both the plugin's model and its backbone under a built-in decoder.
"""

import json
import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.core.checkpoint import build_model, load_checkpoint

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
    assert load_checkpoint(trained_run)["plugins"][DIST] == "0.1.0"


def test_checkpoint_rebuilds_the_trained_model(trained_run):
    checkpoint = load_checkpoint(trained_run / "last.pt")
    model = build_model(checkpoint)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 48, 80))
    assert out.embedding.shape == (1, checkpoint["model"]["embedding_dim"], 48, 80)
    assert torch.equal(model.state_dict()["normalize.mean"], checkpoint["state_dict"]["normalize.mean"])


def test_evaluate_runs_on_the_trained_model(trained_run, tmp_path):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 2
