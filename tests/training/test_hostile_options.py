"""Training options a user or a script can get wrong: each is refused by name with its rule, or
bounded by what the machine allows and said; a run never lands outside --out."""

from __future__ import annotations

import pytest

from instseg import limits
from instseg.errors import ConfigError
from instseg.train.config import TrainConfig
from instseg.train.trainer import Trainer
from training_support import console_text, recording_console, tiny_config


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".", "..", ".hidden", "", "a\\b", "nul\0byte"])
def test_a_run_name_is_one_visible_folder_name(tmp_path, name):
    with pytest.raises(ConfigError, match=r"name=.* \(expected one folder name: no '/', not '.' or '..'"):
        tiny_config(tmp_path, name=name).validate()


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_seeds_outside_numpys_range_are_refused_with_the_range(tmp_path, seed):
    with pytest.raises(ConfigError, match=rf"seed={seed} \(expected 0\.\.4294967295\)"):
        tiny_config(tmp_path, seed=seed).validate()


def test_every_refused_option_is_named_with_its_rule_in_one_message(tmp_path):
    with pytest.raises(ConfigError) as error:
        TrainConfig(epochs=0, lr=float("nan"), zoom=(2.0, 1.0)).validate()
    assert str(error.value) == ("invalid training option(s): epochs=0 (expected an integer >= 1); lr=nan (expected "
                                "a number > 0); zoom=(2.0, 1.0) (expected MIN,MAX within 1/16..16, MIN <= MAX)")


def test_the_largest_seed_trains_on_every_process_rank(tmp_path):
    """Rank seeds are seed + rank, wrapped into numpy's range (a top seed on rank 1 overflowed)."""
    trainer = Trainer(tiny_config(tmp_path, seed=2**32 - 1), console=recording_console())
    assert trainer.config.seed == 2**32 - 1


def test_workers_beyond_the_cpus_are_bounded_and_said(tmp_path):
    console = recording_console()
    trainer = Trainer(tiny_config(tmp_path, workers=10_000), console=console)
    cpus = limits.usable_cpus()
    assert trainer.workers == cpus and trainer.train_loader.num_workers == cpus
    trainer._announce()
    assert f"--workers 10000: using {cpus} DataLoader worker processes (this process may use {cpus} CPUs)" in \
        console_text(console)
