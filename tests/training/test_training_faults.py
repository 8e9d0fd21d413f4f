"""Faults: non-finite losses, an unwritable or full --out, a checkpoint write that fails."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.train.trainer import Trainer
from instseg.errors import ConfigError, TrainingError
from training_support import cli_args, console_text, recording_console, tiny_config


class NaNLoss:
    """Wraps the trainer's loss; the listed calls (0-based) return a NaN total loss."""

    def __init__(self, loss_fn, bad_calls):
        self.loss_fn, self.bad_calls, self.calls = loss_fn, set(bad_calls), 0

    def __call__(self, output, labels):
        terms = self.loss_fn(output, labels)
        if self.calls in self.bad_calls:
            terms["loss"] = terms["loss"] * float("nan")
        self.calls += 1
        return terms


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_non_finite_step_is_skipped_and_logged(tmp_path):
    console = recording_console()
    trainer = Trainer(tiny_config(tmp_path, train_size=8, epochs=2), console)  # 4 steps per epoch
    trainer.loss_fn = NaNLoss(trainer.loss_fn, bad_calls={1})
    trainer.fit()
    text = console_text(console)
    assert "epoch 1 step 2: non-finite loss (loss=nan" in text and "step skipped (1/5 in a row)" in text
    lines = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in lines] == [1, 0]
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


def test_a_skipped_step_leaves_weights_and_optimizer_untouched_but_advances_the_schedule(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), recording_console())
    trainer.loss_fn = NaNLoss(trainer.loss_fn, bad_calls={0})
    batch = next(iter(trainer.train_loader))
    before, lr_before = weights(trainer), trainer.scheduler.get_last_lr()
    result = trainer.train_step([batch])
    assert result.terms is None and result.nonfinite["loss"] != result.nonfinite["loss"]  # NaN
    params = {n for n, _ in trainer.model.named_parameters()}
    after = weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in params)
    assert not trainer.optimizer.state  # Adam never stepped
    assert trainer.scheduler.get_last_lr() != lr_before
    assert trainer.train_step([batch]).terms is not None and trainer.optimizer.state  # the next finite step trains


def test_stops_with_a_clear_message_after_max_nonfinite_in_a_row(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, train_size=12, max_nonfinite=3), recording_console())
    trainer.loss_fn = NaNLoss(trainer.loss_fn, bad_calls=range(100))
    initial = weights(trainer)
    with pytest.raises(TrainingError, match=r"epoch 1 step 3: the loss was non-finite for 3 steps in a row"):
        trainer.fit()
    saved = torch.load(trainer.run_dir / "last.pt", weights_only=True)
    assert saved["training"]["epoch_step"] == 3 and saved["training"]["nonfinite_streak"] == 3
    assert all(torch.equal(saved["state_dict"][k], initial[k]) for k, _ in trainer.model.named_parameters())


def test_out_under_a_file_is_reported_before_training(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create directory"):
        Trainer(tiny_config(tmp_path / "file" / "runs"), recording_console())
    result = CliRunner().invoke(app, ["train", *cli_args(tiny_config(tmp_path / "file" / "runs"))])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)


def test_failing_write_is_reported_before_training(tmp_path, monkeypatch):
    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("instseg.train.rundir.atomic_write_text", no_space)
    with pytest.raises(ConfigError, match=r"cannot write .*config.json \(No space left on device\)"):
        Trainer(tiny_config(tmp_path), recording_console())


def test_disk_without_room_for_checkpoints_is_reported_before_training(tmp_path, monkeypatch):
    class Usage:
        total, used, free = 10**9, 10**9 - 4096, 4096

    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage)
    with pytest.raises(ConfigError, match=r"only 0.0 MiB free on that disk, the checkpoints of this run need about"):
        Trainer(tiny_config(tmp_path), recording_console())


def test_checkpoint_that_cannot_be_written_stops_training_clearly(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path), recording_console())

    def no_space(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("instseg.train.rundir.save_checkpoint", no_space)
    with pytest.raises(TrainingError, match=r"could not write .*last.pt \(No space left on device\); the previous"):
        trainer.fit()
