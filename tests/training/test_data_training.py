"""Training and evaluation on file datasets, end to end from the CLI, with tiny settings."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from data_fixtures import cvppp, folder
from instseg.cli.main import app, main
from instseg.checkpoint import load_checkpoint
from instseg.data import build_datasets, estimate_mean_std
from instseg.predict.evaluation import evaluate_dataset
from instseg.testing import tiny_model

runner = CliRunner()
TINY = ["--model", "unet-cbam", "--width", "4", "--image-size", "32", "--epochs", "1", "--batch-size", "4"]


def train(tmp_path, *args, name="run"):
    result = runner.invoke(app, ["train", *TINY, *args, "--out", str(tmp_path / "runs"), "--name", name])
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / name


def losses(run):
    return [json.loads(line)["train"]["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_and_evaluate_on_cvppp_with_a_val_list(tmp_path, monkeypatch):
    root = cvppp(tmp_path / "A1", n=7)
    (tmp_path / "val.txt").write_text("plant002\nplant006\n")
    monkeypatch.chdir(tmp_path)  # relative paths are stored absolute in config.json
    run = train(tmp_path, "--data", "cvppp:A1", "--val-list", "val.txt")
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["data"] == f"cvppp:{root}" and record["config"]["augment"] is True
    assert record["config"]["val_list"] == str(tmp_path / "val.txt")
    # normalisation statistics come from the training split and travel with the model
    train_set, val_set = build_datasets(f"cvppp:{root}", image_size=32, seed=0, train_size=1, val_size=1,
                                        val_list=str(tmp_path / "val.txt"))
    assert [s.name for s in val_set.samples] == ["plant002", "plant006"]
    mean, std = estimate_mean_std(train_set)
    assert record["model"]["mean"] == pytest.approx(mean) and record["model"]["std"] == pytest.approx(std)
    state = load_checkpoint(run / "last.pt").state_dict
    assert state["normalize.mean"].view(-1).tolist() == pytest.approx(mean)
    assert state["normalize.std"].view(-1).tolist() == pytest.approx(std)
    # augmentation included, the same seed repeats the run
    again = train(tmp_path, "--data", "cvppp:A1", "--val-list", "val.txt", name="again")
    assert losses(again) == pytest.approx(losses(run), rel=1e-6)

    monkeypatch.chdir(tmp_path.parent)  # evaluate from elsewhere: the run's own split is rebuilt
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["images"] == 2 and report["data"] == f"cvppp:{root}"
    (tmp_path / "one.txt").write_text("plant004\n")
    result = runner.invoke(app, ["evaluate", str(run), "--val-list", str(tmp_path / "one.txt"),
                                 "--out", str(tmp_path / "eval1")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval1" / "metrics.json").read_text())["images"] == 1


def test_train_on_a_folder_with_mixed_sizes_workers_and_too_many_instances(tmp_path):
    root = folder(tmp_path / "data", sizes=((40, 36), (48, 56), (40, 36), (32, 32), (56, 40), (44, 44)))
    # every plant has more than 3 leaves: the count target is clipped, training goes on
    run = train(tmp_path, "--data", str(root), "--val-split", "0.5", "--workers", "2", "--max-instances", "3")
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["data"] == f"folder:{root}"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["val"]["sbd"] == 0.0  # one step: no foreground predicted yet
    # seeded, one torch thread (tests/training/conftest.py): measured 8.8363 / 0.07401 on an AMD EPYC (8.8313 /
    # 0.07494 on two threads), 8.7621 / 0.06691 on an Intel Xeon (AVX-512, no AMX): the CPU's kernels move the
    # one step's augmented batches; the count term is the one the clipped targets (--max-instances 3) feed
    assert metrics[0]["train"]["loss"] == pytest.approx(8.80, rel=1.5e-2)
    assert metrics[0]["train"]["count"] == pytest.approx(0.0705, rel=0.08)


def test_evaluation_predicts_at_working_size_and_scores_at_original_size(tmp_path):
    root = folder(tmp_path / "data", sizes=((40, 36), (48, 56), (40, 36), (32, 32)))
    _, val = build_datasets(f"folder:{root}", image_size=24, seed=0, train_size=1, val_size=1, val_split=0.75)
    model = tiny_model("unet-cbam")
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    result = evaluate_dataset(model, val, torch.device("cpu"), batch_size=8, image_size=24, keep_predictions=3)
    assert sorted(seen) == sorted([(2, 3, 27, 24), (1, 3, 24, 28)])  # the two 40x36 images share a batch
    assert sorted(p.shape for p in result.predictions) == sorted(val.sizes())
    assert len(result.scores) == 3


def test_unreadable_image_during_training_is_one_line(tmp_path, monkeypatch, capsys):
    root = cvppp(tmp_path / "A1", n=4)
    data = (root / "plant003_rgb.png").read_bytes()
    (root / "plant003_rgb.png").write_bytes(data[: len(data) - 200])  # header fine (passes the scan), pixels cut
    monkeypatch.setattr(sys, "argv", ["instseg", "train", *TINY, "--data", f"cvppp:{root}",
                                      "--out", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {root / 'plant003_rgb.png'}: image is truncated or corrupted")
