"""A run trained with a plugin records it; loading it where the plugin is missing says what to install."""

import json
import subprocess
import sys

import pytest
from fakeplugins import installed, plugin_source
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.checkpoint import load_checkpoint
from instseg.models.factory import build_model
from instseg.errors import CheckpointError
from instseg.testing import only_plugins

TINY = ["--width", "4", "--image-size", "64", "--epochs", "1", "--train-size", "2", "--val-size", "2",
        "--batch-size", "2"]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin-run")
    with installed(root, "instseg-fake", "fakeplug", plugin_source("fake"), version="0.3.0"), \
            only_plugins("instseg-fake"):
        result = CliRunner().invoke(app, ["train", "--model", "fake-unet", *TINY, "--out", str(root / "runs"),
                                          "--name", "fake"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "fake"


def test_run_records_the_plugin_distribution(plugin_run):
    config = json.loads((plugin_run / "config.json").read_text())
    assert config["plugins"] == {"instseg-fake": "0.3.0"}  # model and backbone both come from it
    assert load_checkpoint(plugin_run).plugins == config["plugins"]


def test_missing_plugin_says_exactly_what_to_install(plugin_run):
    result = subprocess.run([sys.executable, "-m", "instseg", "evaluate", str(plugin_run)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(
        f"error: {plugin_run / 'best.pt'}: model 'fake-unet' needs plugin(s) not loaded here: "
        "pip install instseg-fake==0.3.0 (unknown model 'fake-unet'")


def test_installed_but_disabled_plugin_is_named(plugin_run, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTSEG_DISABLE_PLUGINS", "1")
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake"), version="0.3.0"):
        with pytest.raises(CheckpointError, match=r"instseg-fake 0.3.0 is installed but not loaded "
                                                  r"\(INSTSEG_DISABLE_PLUGINS=1\)"):
            build_model(load_checkpoint(plugin_run))


def test_installed_other_version_without_the_model_is_named(plugin_run, tmp_path):
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("renamed"), version="0.4.0"), \
            only_plugins("instseg-fake"):
        with pytest.raises(CheckpointError, match=r"instseg-fake 0.4.0 is installed, the checkpoint was made with "
                                                  r"0.3.0: pip install instseg-fake==0.3.0"):
            build_model(load_checkpoint(plugin_run))


def test_installed_but_broken_plugin_gives_its_error(plugin_run, tmp_path):
    with installed(tmp_path, "instseg-fake", "fakeplug", "raise ImportError('needs libfoo')\n", version="0.3.0"), \
            only_plugins("instseg-fake"):
        with pytest.raises(CheckpointError, match=r"instseg-fake 0.3.0 is installed but failed to load: "
                                                  r"import failed: ImportError: needs libfoo"):
            build_model(load_checkpoint(plugin_run))


def test_checkpoint_loads_again_once_the_plugin_is_back(plugin_run, tmp_path):
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake"), version="0.3.0"), \
            only_plugins("instseg-fake"):
        model = build_model(load_checkpoint(plugin_run))
    assert type(model.backbone).__name__ == "UNetEncoder" and model.backbone.strides == (1, 2)
