"""`instseg plugins` and `instseg models` with healthy and broken plugins: the CLI never breaks."""

import json
import os
import re
import subprocess
import sys

from fakeplugins import failing_hook_source, installed, plugin_source
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.testing import only_plugins

runner = CliRunner()
BROKEN = "import does_not_exist_anywhere\n"


def test_plugins_table_lists_builtins():
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "unet_cbam" in result.output and "register_models" in result.output and "loaded" in result.output


def test_plugins_json_shows_loaded_and_failed_plugins(tmp_path):
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake"), version="2.0"), \
            installed(tmp_path, "instseg-broken", "broken", BROKEN), \
            only_plugins("instseg-fake", "instseg-broken"):
        result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {p["name"]: p for p in json.loads(result.output)["plugins"]}
    assert rows["unet"]["builtin"] and rows["unet"]["hooks"] == ["register_backbones", "register_models"]
    fake = rows["fakeplug"]
    assert (fake["distribution"], fake["version"], fake["status"]) == ("instseg-fake", "2.0", "loaded")
    assert fake["registered"] == ["backbone:fake-encoder", "model:fake-unet"]
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["error"].startswith("import failed: ModuleNotFoundError")
    assert "Traceback" in broken["traceback"]


def run_cli(*args, path):
    """instseg in a fresh process that also sees the fake distribution at `path`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "instseg", *args], capture_output=True, text=True, env=env)


def test_broken_plugin_does_not_break_models_or_plugins(tmp_path):
    with installed(tmp_path, "instseg-broken", "broken", BROKEN) as path, only_plugins("instseg-broken"):
        models = run_cli("models", path=path)
        table = runner.invoke(app, ["plugins"])
    assert models.returncode == 0, models.stderr
    assert "unet-cbam" in models.stdout
    assert "plugin failed plugin 'broken' (instseg-broken 0.1.0): import failed: ModuleNotFoundError" in models.stderr
    assert table.exit_code == 0 and "failed" in table.output and "--json" in table.output


def test_training_a_model_of_a_broken_plugin_names_the_distribution(tmp_path):
    source = failing_hook_source("half")
    with installed(tmp_path, "instseg-half", "halfway", source) as path, only_plugins("instseg-half"):
        result = run_cli("train", "--model", "half-unet", "--out", str(tmp_path / "runs"), path=path)
    assert result.returncode == 1
    assert re.fullmatch(r"error: model 'half-unet' comes from plugin 'halfway' \(instseg-half 0.1.0\), which failed "
                        r"to load: register_models failed: RuntimeError: boom \(halfway.py:\d+\)\n", result.stderr)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
