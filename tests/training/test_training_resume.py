"""Interrupt a training subprocess mid-epoch, resume it, and land on the same weights.

Decision tested here: an interrupted run resumes from the step where it stopped - last.pt holds
the position inside the epoch (the sampler skips the batches already trained on) and every
RNG state - rather than from the start of the epoch. On the CPU with one thread the resumed
run is bit-identical to a straight one, so the comparison is exact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import textwrap

import numpy as np
import pytest
import torch

from checkpoints import write_payload
from instseg.checkpoint import load_resume_checkpoint
from instseg.train.seeding import capture_rng_state, restore_rng_state
from instseg.train.trainer import GracefulStop, Trainer, resume_config
from instseg.errors import CheckpointError, ConfigError
from training_support import PYTHON, cli_args, recording_console, subprocess_env, tiny_config

# The real CLI, sent a real SIGTERM right after its N-th optimizer step (deterministic, unlike a timer).
SIGNALLING_LAUNCHER = textwrap.dedent("""
    import os, signal, sys
    import torch

    after_steps = int(sys.argv[1])
    step = torch.optim.AdamW.step
    calls = [0]

    def step_then_signal(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == after_steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    torch.optim.AdamW.step = step_then_signal
    from instseg.cli.main import main

    sys.argv = ["instseg", *sys.argv[2:]]
    main()
""")


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["discriminative", "spatial"])
def test_sigterm_mid_epoch_then_resume_matches_a_straight_run(tmp_path, objective):
    config = tiny_config(tmp_path / "interrupted", train_size=12, epochs=2, objective=objective)  # 6 steps per epoch
    launcher = tmp_path / "launch.py"
    launcher.write_text(SIGNALLING_LAUNCHER)
    stopped = subprocess.run([PYTHON, str(launcher), "3", "train", *cli_args(config)],
                             capture_output=True, text=True, env=subprocess_env(), timeout=240)
    run = tmp_path / "interrupted" / "run"
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "SIGTERM: stopping after this step" in stopped.stderr
    assert f"resume with: instseg train --resume {run}" in stopped.stderr
    assert not list(run.glob(".*.tmp")), "an atomic write left its temporary file"
    raw = torch.load(run / "last.pt", weights_only=True)  # plain data and tensors only
    assert (raw["epoch"], raw["training"]["epoch_step"], raw["training"]["epoch_done"]) == (1, 3, False)
    assert not (run / "metrics.jsonl").exists()  # epoch 1 never finished

    resumed = subprocess.run([PYTHON, "-m", "instseg", "train", "--resume", str(run)],
                             capture_output=True, text=True, env=subprocess_env(), timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "epoch 1, step 3/6" in resumed.stderr

    straight = Trainer(tiny_config(tmp_path / "straight", train_size=12, epochs=2, objective=objective),
                       recording_console())
    straight.fit()
    final = torch.load(run / "last.pt", weights_only=True)
    expected = straight.model.state_dict()
    assert final["step"] == 12 and final["config"]["objective"] == objective
    if objective == "discriminative":  # --cluster auto, measured at the end
        assert final.keys() == raw.keys() | {"cluster_scores"} and final["config"]["cluster"] in final["cluster_scores"]
    else:  # seeds: the one method that reads spatial embeddings, fixed from the start
        assert final.keys() == raw.keys() and final["config"]["cluster"] == "seeds"
    for key, value in expected.items():  # weights and BatchNorm statistics: exact
        assert torch.equal(final["state_dict"][key], value), key
    assert [m["train"] for m in metrics(run)] == [m["train"] for m in metrics(tmp_path / "straight" / "run")]


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    state = capture_rng_state()
    draws = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    write_payload(tmp_path / "c.pt", {"rng": state})
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["rng"]
    restore_rng_state(loaded)
    again = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2:] == again[2:]


def test_resume_refuses_changed_options_and_foreign_global_batch(tmp_path):
    config = tiny_config(tmp_path)
    trainer = Trainer(config, recording_console())
    trainer.fit()
    checkpoint = load_resume_checkpoint(trainer.run_dir)
    with pytest.raises(ConfigError, match="only --device, --workers.*given: --epochs, --lr"):
        resume_config(checkpoint, {"lr": 1.0, "epochs": 5, "device": "cpu"})
    assert resume_config(checkpoint, {"workers": 0, "max_nonfinite": 2}).max_nonfinite == 2
    with pytest.raises(ConfigError, match="same global batch"):
        Trainer(resume_config(checkpoint, {"accumulate": 2}), recording_console(), resume=checkpoint)


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), recording_console())
    trainer.fit()
    before = (trainer.run_dir / "last.pt").read_bytes()
    checkpoint = load_resume_checkpoint(trainer.run_dir)
    again = Trainer(resume_config(checkpoint, {}), recording_console(), resume=checkpoint)
    assert again.fit().interrupted_by is None and again.step == trainer.step
    assert (trainer.run_dir / "last.pt").read_bytes() == before


class RunsCode:
    def __reduce__(self):
        return (print, ("a checkpoint just ran code",))


def test_missing_truncated_or_unsafe_last_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no last.pt"):
        load_resume_checkpoint(tmp_path)
    trainer = Trainer(tiny_config(tmp_path), recording_console())
    trainer.fit()
    last = trainer.run_dir / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_resume_checkpoint(trainer.run_dir)
    torch.save({**torch.load(trainer.run_dir / "best.pt", weights_only=True), "rng": RunsCode()}, last)
    with pytest.raises(CheckpointError, match="could run code"):
        load_resume_checkpoint(trainer.run_dir)
    assert "ran code" not in capsys.readouterr().out


def test_first_signal_asks_to_stop_and_second_aborts():
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop(quiet=True) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
