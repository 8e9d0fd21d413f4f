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


def test_evaluate_prints_and_writes_metrics(run, tmp_path):
    # `run`: the lane's 4-epoch run (tests/cli/conftest.py) - it segments, so its SBD is worth pinning;
    # trained_run (2 epochs of 8 images) still predicts no foreground (SBD 0)
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["images"] == 8
    # measured 0.1482 (one torch thread, as this lane runs); 0.1441 when trained and evaluated on two
    assert report["metrics"]["sbd"]["mean"] == pytest.approx(0.148, abs=0.02)
    assert "FG Dice" in result.output
    # the same weights, images and clustering give the same figure training reported for them
    record = json.loads((run / "config.json").read_text())
    chosen = record["config"]["cluster"]
    assert report["metrics"]["sbd"]["mean"] == pytest.approx(record["cluster_scores"][chosen], abs=1e-6)


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


# -- one option vocabulary across the verbs -------------------------------------------------------

def click_command(*path):
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def flat(text):
    """Typer's error box as one line: no box characters, single spaces."""
    return " ".join(text.replace("│", " ").split())


VERBS = [("train",), ("evaluate",), ("predict",), ("infer",), ("export",), ("models",), ("plugins",),
         ("data", "check")]


def test_version_prints_the_installed_version():
    from instseg.version import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"instseg {__version__}\n"
    assert run_cli("--version").stdout == f"instseg {__version__}\n"


def test_a_bad_choice_exits_non_zero_and_lists_the_choices():
    for verb in ("predict", "infer", "evaluate"):
        result = runner.invoke(app, [verb, "--cluster", "bogus"])
        assert result.exit_code == 2, (verb, result.output)
        assert "Invalid value for '--cluster'" in result.output
        assert "'bogus' is not one of 'kmeans', 'meanshift', 'regions'" in flat(result.output)
    result = runner.invoke(app, ["train", "--cluster", "bogus"])
    assert result.exit_code == 2 and "'bogus' is not one of 'auto', 'kmeans', 'meanshift', 'regions'" in flat(
        result.output)
    for option, value, listed in (("--optimizer", "sgd", "'adam', 'adamw'"), ("--scheduler", "step", "'cosine'"),
                                  ("--preset", "fast", "'none'")):
        result = runner.invoke(app, ["train", option, value])
        assert result.exit_code == 2 and listed in flat(result.output), (option, result.output)
    result = runner.invoke(app, ["infer", "m.onnx", "x.png", "--provider", "tpu"])
    assert result.exit_code == 2 and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in flat(result.output)


def test_the_provider_choices_are_onnx_runtimes():
    from instseg.cli.options import Provider
    from instseg.runtime import PROVIDER_CHOICES

    assert tuple(choice.value for choice in Provider) == PROVIDER_CHOICES


def test_a_bad_device_is_one_line_before_anything_loads(tmp_path):
    for verb in (["train"], ["evaluate", str(tmp_path)], ["predict", str(tmp_path), str(tmp_path)]):
        result = run_cli(*verb, "--device", "gpu")
        assert result.returncode == 1, result.stderr
        assert result.stderr == "error: --device gpu: choose from auto, cpu, cuda or cuda:N (N: a CUDA device index)\n"
    help_text = flat(runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "300"}).output)
    assert "<auto|cpu|cuda|cuda:N>" in help_text
    from instseg.cli.options import check_device

    assert [check_device(spec) for spec in ("auto", "CPU", " cuda ", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]


def test_every_verb_uses_one_vocabulary():
    """-o is --out, the output, wherever it exists; --resume (a run directory) and --workers
    (processes) only in train; the pipeline's threads are --threads; --batch-size the one spelling."""
    seen = {}
    for path in VERBS:
        options = {opt: param for param in click_command(*path).params for opt in param.opts + param.secondary_opts}
        seen[path] = options
        if "-o" in options:
            assert options["-o"] is options["--out"], path
        assert "--output" not in options and "--batch" not in options, path
    assert {path for path, options in seen.items() if "-o" in options} == {
        ("train",), ("evaluate",), ("predict",), ("infer",), ("export",)}
    assert [path for path, options in seen.items() if "--resume" in options] == [("train",)]
    assert [path for path, options in seen.items() if "--workers" in options] == [("train",)]
    assert "--model-option" in seen[("train",)] and seen[("train",)]["--model-option"].opts == ["--model-option"]
    for verb in ("predict", "infer"):
        assert {"--threads", "--skip-existing", "--batch-size"} <= set(seen[(verb,)]), verb
    assert "--intra-op-threads" in seen[("infer",)]


def test_predict_and_infer_share_one_definition_of_their_common_options():
    from dataclasses import fields

    from instseg.cli.options import PredictOptions

    predict, infer = ({param.name: param for param in click_command(verb).params} for verb in ("predict", "infer"))
    shared = [field.name for field in fields(PredictOptions)]
    assert set(predict) - set(shared) == {"checkpoint", "device"}
    assert set(infer) - set(shared) == {"model", "provider", "intra_op_threads"}
    for name in shared:
        a, b = predict[name], infer[name]
        described = [(type(p), p.opts, p.secondary_opts, p.default, getattr(p, "help", None),
                      str(getattr(p, "type", None))) for p in (a, b)]
        assert described[0] == described[1], name


def test_help_shows_square_brackets_literally():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "pip install 'instseg[tensorboard]'" in result.output
    assert "'coco:ANNOTATIONS.json[:IMAGE_DIR]'" in result.output


def test_o_is_the_output_of_predict_and_export(trained_run, tmp_path):
    from instseg.data.synthetic import render_plant
    from instseg.io.writing import write_rgb

    run, _ = trained_run
    write_rgb(tmp_path / "plant.png", render_plant(7, 0, (64, 64), split="val")[0])
    predicted = runner.invoke(app, ["predict", str(run), str(tmp_path / "plant.png"), "-o", str(tmp_path / "pred"),
                                    "--device", "cpu", "--threads", "1"])
    assert predicted.exit_code == 0, predicted.output
    assert (tmp_path / "pred" / "plant_label.png").is_file()
    exported = runner.invoke(app, ["export", str(run), "--onnx", "-o", str(tmp_path / "m.onnx")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "m.onnx").is_file() and not (run / "model.onnx").exists()


def test_loss_weights_margins_and_zoom_reach_the_run(tmp_path):
    from data_fixtures import cvppp

    data = cvppp(tmp_path / "A1", n=4)
    args = ["train", "--model", "unet", "--width", "4", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
            "--data", f"cvppp:{data}", "--val-split", "0.5", "--device", "cpu", "--out", str(tmp_path / "runs"),
            "--name", "r", "--loss-weight", "instance=0.5", "--delta-d", "2", "--zoom", "0.5,2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())["config"]
    assert config["loss_weights"]["instance"] == 0.5 and config["delta_d"] == 2.0 and config["zoom"] == [0.5, 2.0]
    epoch = json.loads((tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < epoch["train"]["instance"] < 1  # the instance-level term was trained and logged
    for bad, message in ((["--loss-weight", "push=1"], "--loss-weight 'push=1'"), (["--zoom", "2,1"], "zoom=(2.0, 1.0)")):
        result = CliRunner().invoke(app, [*args[:-6], *bad, "--name", "bad"])
        assert result.exit_code != 0 and message in str(result.exception), result.output
        assert not (tmp_path / "runs" / "bad").exists()


def test_naming_one_loss_weight_keeps_the_recipe_s_others():
    from instseg.train.config import TrainConfig, parse_loss_weights
    from instseg.train.presets import PRESETS

    recipe = PRESETS["cvppp"]["loss_weights"]
    assert recipe["instance"] == 1.0  # chosen on the tuning plants (docs/benchmarks.md)
    merged = parse_loss_weights(["count=2"], recipe)
    assert merged == {**recipe, "count": 2.0}
    TrainConfig(loss_weights=merged).validate()
