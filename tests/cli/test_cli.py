"""The CLI end to end in a temp dir, with tiny settings."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from instseg.cli.main import app

runner = CliRunner()
TINY = ["--image-size", "64", "--epochs", "2", "--train-size", "8", "--val-size", "4", "--batch-size", "4",
        "--width", "4"]


def test_models_lists_builtins():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    names = {row["name"]: row for row in json.loads(result.output)["models"]}
    assert names["unet-cbam"]["kind"] == "model" and names["unet-encoder"]["kind"] == "backbone"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["train", "--model", "unet-cbam", *TINY, "--out", str(out), "--name", "tiny"])
    assert result.exit_code == 0, result.output
    return out / "tiny", result.output


def test_train_writes_the_run_directory(trained_run):
    run, output = trained_run
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"sbd", "fg_dice", "dic", "abs_dic"} <= set(lines[0]["val"])
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["model"] == "unet-cbam" and len(config["model"]["mean"]) == 3
    assert "SBD" in output and "next: instseg evaluate" in output


def test_evaluate_prints_and_writes_metrics(trained_run, tmp_path):
    run, _ = trained_run
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["images"] == 4
    assert 0.0 <= report["metrics"]["sbd"]["mean"] <= 1.0
    assert "FG Dice" in result.output


def test_seed_makes_runs_repeatable(trained_run, tmp_path):
    run, _ = trained_run
    result = runner.invoke(app, ["train", "--model", "unet-cbam", *TINY, "--out", str(tmp_path), "--name", "again"])
    assert result.exit_code == 0, result.output
    first = [json.loads(x)["train"]["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(x)["train"]["loss"] for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert first == pytest.approx(second, rel=1e-5)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "instseg", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path):
    result = run_cli("train", "--model", "no-such-model", "--out", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: unknown model 'no-such-model'")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("evaluate", str(tmp_path / "missing"))
    assert result.returncode == 1 and "no such checkpoint file or run directory" in result.stderr


def test_worker_wrapped_error_is_reduced_to_its_message():
    from instseg.cli.main import one_line
    from instseg.errors import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\ninstseg.errors.DataError: a.png: image is truncated')
    assert one_line(wrapped) == "a.png: image is truncated"
    assert one_line(DataError("b.png: no such file")) == "b.png: no such file"
