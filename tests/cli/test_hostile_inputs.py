"""Careless or hostile input, as a user would give it: every case exits non-zero with one line
that names the file and the problem, prints no traceback, and changes no file it did not write.
(Predicting into the input folder is in test_predict.py; runner contract breaks in test_predict.py.)"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from instseg.io.atomic import atomic_write_text
from instseg.cli.main import app
from checkpoints import checkpoint_of, write_payload
from instseg.checkpoint import load_checkpoint, save_checkpoint
from instseg.io.microscopy import FIXED
from instseg.train.config import TrainConfig
from instseg.errors import CheckpointError, ConfigError, DataError
from instseg.runtime.metadata import ModelInfo
from instseg.testing import tiny_model
from instseg.instances.clustering import ClusterParams
from instseg.io.images import read_image
from instseg.io.writing import write_rgb
from instseg.io.inputs import gather_inputs
from instseg.predict.pipeline import Failure, Prediction, predict
from training_support import recording_console, subprocess_env, tiny_config

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


def run_instseg(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real entry point (`main()`), as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "instseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=subprocess_env())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = tiny_model("unet", mean=(0.5,) * 3, std=(0.25,) * 3)
    config = TrainConfig(model="unet", width=4, embedding_dim=8, image_size=32, val_size=2)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, good_payload(model, config))
    return path


def good_payload(model, config: TrainConfig):
    from dataclasses import asdict

    return checkpoint_of(model, config=asdict(config), plugins={})


# -- 2. export never replaces what it did not write -------------------------------------------------


def test_export_refuses_the_checkpoint_itself_and_foreign_files(checkpoint, tmp_path):
    before = checkpoint.read_bytes()
    result = invoke("export", checkpoint, "--onnx", "-o", checkpoint)
    assert isinstance(result.exception, ConfigError) and "is the checkpoint being exported" in str(result.exception)
    assert checkpoint.read_bytes() == before
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    result = invoke("export", checkpoint, "--onnx", "-o", notes)
    assert isinstance(result.exception, ConfigError) and "is not an ONNX model written by instseg" in str(result.exception)
    assert notes.read_text() == "my notes"


# -- 3. the working size is bounded -----------------------------------------------------------------


def test_a_needle_image_is_refused_before_it_is_scaled(tmp_path):
    write_rgb(tmp_path / "needle.png", np.zeros((1, 2000, 3), np.uint8))
    with pytest.raises(DataError, match=r"needle.png: 2000x1 is too elongated"):
        read_image(tmp_path / "needle.png")


# -- 4. malformed checkpoints are refused field by field --------------------------------------------


@pytest.mark.parametrize("change, field", [
    (lambda p: p.pop("config"), "'config'"),
    (lambda p: p.update(model="unet"), "'model'"),
    (lambda p: p.pop("state_dict"), "'state_dict'"),
    (lambda p: p["model"].update(width=10**6), "'model.width'"),
    (lambda p: p["model"].update(embedding_dim=0), "'model.embedding_dim'"),
    (lambda p: p["model"].update(std=[1.0, 0.0, 1.0]), "'model.std'"),
    (lambda p: p["state_dict"].update(extra="text"), "'state_dict' holds a non-tensor"),
])
def test_malformed_checkpoint_fields_are_named(checkpoint, tmp_path, change, field):
    payload = {k: v for k, v in torch.load(checkpoint, weights_only=True).items() if k not in ("format", "format_version")}
    payload["model"] = dict(payload["model"])
    payload["state_dict"] = dict(payload["state_dict"])
    change(payload)
    write_payload(tmp_path / "bad.pt", payload)
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(tmp_path / "bad.pt")


def test_random_bytes_and_onnx_files_are_not_called_malicious(tmp_path):
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07" + os.urandom(100))
    with pytest.raises(CheckpointError, match=r"noise.pt: not a checkpoint \(not a PyTorch checkpoint archive\)$"):
        load_checkpoint(tmp_path / "noise.pt")
    with pytest.raises(CheckpointError, match="an ONNX model: run it with `instseg infer`"):
        load_checkpoint(tmp_path / "model.onnx")


def test_a_refused_pickle_never_advises_weights_only_false(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    torch.save({"format": "instseg.checkpoint", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "evil.pt")
    assert "could run code" in str(error.value) and "weights_only=False" not in str(error.value)


# -- 5. ONNX metadata is validated on load; outputs are checked before use -------------------------


def onnx_props(**changes: str) -> dict[str, str]:
    from instseg.runtime.metadata import ModelInfo as Info

    info = Info(model="unet", backbone=None, instseg_version="0", plugins={}, exporter="dynamo", torch_version="2",
                opset=18, precision="fp32", exported="now", source="best.pt", embedding_dim=8, max_instances=20,
                image_size=32, multiple_of=16, static_size=None, dynamic_batch=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    return {**info.to_props(), **changes}


@pytest.mark.parametrize("key, value, message", [
    ("instseg.multiple_of", "0", "instseg.multiple_of is 0, expected 1..1024"),
    ("instseg.max_instances", "0", "instseg.max_instances is 0"),
    ("instseg.image_size", "0", "instseg.image_size is 0"),
    ("instseg.embedding_dim", "-3", "instseg.embedding_dim is -3"),
    ("instseg.std", "[0.2, 0, 0.2]", "instseg.std is [0.2, 0, 0.2], expected three finite positive numbers"),
    ("instseg.mean", "[0.5]", "instseg.mean is [0.5]"),
    ("instseg.object_size", "-1", "instseg.object_size is '-1', expected a number in 1/2..100000"),
])
def test_broken_onnx_metadata_is_refused_by_key(key, value, message):
    assert ModelInfo.from_props(onnx_props(), "m.onnx").multiple_of == 16
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelInfo.from_props(onnx_props(**{key: value}), "m.onnx")


def test_the_object_size_round_trips_and_older_files_have_none():
    props = onnx_props(**{"instseg.object_size": "12.5"})
    assert ModelInfo.from_props(props, "m.onnx").object_size == 12.5
    del props["instseg.object_size"]
    assert ModelInfo.from_props(props, "m.onnx").object_size is None


class ConstantRunner:
    """One instance everywhere, whatever the count output says."""

    max_instances, multiple_of, static_size, image_size, scale, reading = 20, 1, None, 12, None, FIXED

    def __init__(self, count: float = 0.05, split: bool = False) -> None:
        self.count, self.split = count, split
        self.cluster = ClusterParams()

    def __call__(self, images):
        n, _, h, w = images.shape
        semantic = np.stack([np.zeros((n, h, w)), np.ones((n, h, w))], 1).astype(np.float32)
        embedding = np.zeros((n, 2, h, w), np.float32)
        if self.split:  # two instances: left and right half
            embedding[:, 0, :, w // 2:] = 5.0
        return semantic, embedding, np.full((n, 1), self.count, np.float32)


def test_a_nan_count_is_a_failure_naming_the_image(tmp_path):
    write_rgb(tmp_path / "a.png", np.zeros((12, 12, 3), np.uint8))
    [result] = predict(gather_inputs([tmp_path]), ConstantRunner(count=float("nan")))
    assert isinstance(result, Failure) and "a.png: the model's count output is not finite" in result.message


# -- 6. training options are checked before anything is made ---------------------------------------


@pytest.mark.parametrize("option, value", [("--max-instances", "0"), ("--embedding-dim", "0"), ("--width", "0"),
                                           ("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "-1")])
def test_bad_training_options_leave_no_run_directory(tmp_path, option, value):
    result = run_instseg("train", option, value, "--epochs", "1", "--out", tmp_path / "runs")
    assert_one_line_error(result, option.removeprefix("--").replace("-", "_"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_architecture_option_it_refuses_is_one_line(tmp_path):
    result = run_instseg("train", "--model", "unet", "--model-option", "up=sideways", "--epochs", "1",
                         "--out", tmp_path)
    assert_one_line_error(result, "--model unet: cannot be built with these options", "sideways")


# -- 7. files follow the umask --------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode


# -- 8. a damaged file stops training before its first step ---------------------------------------


def test_a_truncated_validation_image_fails_before_training(tmp_path):
    from data_fixtures import cvppp

    root = cvppp(tmp_path / "A1", n=4)
    victim = sorted(root.glob("*_rgb.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:200])
    from instseg.train.trainer import Trainer

    with pytest.raises(DataError, match=f"{victim.name}: image is truncated or corrupted"):
        Trainer(tiny_config(tmp_path / "runs", data=f"cvppp:{root}", val_split=0.5), recording_console())
    assert not (tmp_path / "runs").exists()  # no half-made run directory either


# -- 9. what repeats exactly ----------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_identical_runs_give_identical_weights(tmp_path, threads):
    from instseg.train.trainer import Trainer

    torch.set_num_threads(threads)
    weights = []
    for name in ("a", "b"):
        trainer = Trainer(tiny_config(tmp_path, name=name, train_size=16, epochs=1), recording_console())
        trainer.fit()
        weights.append(trainer.model.state_dict())
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


# -- 10. a signal after the last step, and resuming a finished run ----------------------------------


def test_a_signal_during_the_last_step_still_finishes_the_run(tmp_path, monkeypatch):
    from instseg.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, epochs=1), recording_console())
    last = lambda self, stop: signal.SIGINT if self.state.epoch_step == self.steps_per_epoch else None  # noqa: E731
    monkeypatch.setattr(Trainer, "_agreed_signal", last)
    result = trainer.fit()
    assert result.interrupted_by is None and result.epoch == 1 and (trainer.run_dir / "best.pt").exists()


def test_resuming_a_finished_run_says_it_is_finished(tmp_path):
    from instseg.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, epochs=1), recording_console())
    trainer.fit()
    result = invoke("train", "--resume", trainer.run_dir)
    assert result.exit_code == 0, result.output
    assert "is finished (epoch 1 of 1" in result.output and "nothing to resume" in result.output


# -- 11. control characters never reach the terminal raw ------------------------------------------


def test_escape_sequences_in_file_names_are_shown_escaped(checkpoint, tmp_path):
    name = "evil\x1b[2J\x1b]0;pwned\x07.png"
    result = run_instseg("predict", checkpoint, tmp_path / name, "--out", tmp_path / "out")
    assert_one_line_error(result, "evil\\x1b[2J\\x1b]0;pwned\\x07.png: no file matches")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


# -- 12. what a path really is -----------------------------------------------------------------------


def test_symlink_loops_and_files_are_named_for_what_they_are(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    result = run_instseg("data", "check", loop)
    assert_one_line_error(result, "loop: a symbolic link that leads nowhere or to itself")
    (tmp_path / "plant.png").write_bytes(b"x")
    result = run_instseg("data", "check", tmp_path / "plant.png")
    assert_one_line_error(result, "plant.png: a file, not a dataset folder")


# -- 13. ids stay contiguous when a label map is shrunk back ----------------------------------------


def test_a_tiny_image_keeps_contiguous_ids(tmp_path):
    write_rgb(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    [result] = predict(gather_inputs([tmp_path]), ConstantRunner(count=0.1, split=True))
    assert isinstance(result, Prediction) and result.labels.shape == (1, 1) and result.labels[0, 0] == 1


# -- internal errors ---------------------------------------------------------------------------------


def test_internal_errors_are_one_line_unless_debugging(tmp_path):
    code = ("import sys; from instseg.cli import main as m\n"
            "def boom(): raise RuntimeError('kaboom\\nsecond line')\n"
            "m.app = boom; m.main()")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert_one_line_error(quiet, "internal error (RuntimeError: kaboom)", "INSTSEG_DEBUG=1")
    assert quiet.returncode == 2
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**subprocess_env(), "INSTSEG_DEBUG": "1"})
    assert "Traceback" in loud.stderr and "kaboom" in loud.stderr
