"""Multi-process training: `instseg train` under torchrun with 2 gloo processes on the CPU.

BatchNorm normalises each process's micro-batch with that micro-batch's statistics, so two
processes with batch 2 cannot equal one process with batch 4 exactly. They do equal one process
that *accumulates* the same micro-batches (GlobalBatchSampler gives slot k * world + r to
micro-batch k of rank r): same global batch, same BatchNorm groups. With 2 processes x 1 step
against 1 process x 2 steps that is bit-exact here (halving is exact in floating point). The
test runs 2 processes x accumulate 2 against 1 process x accumulate 4, so `no_sync` is
exercised too; there the gradients are summed in a different order ((a+b)+(c+d) against
((a+b)+c)+d) and Adam, which divides each gradient by its own running magnitude, turns the
rounding of gradients that nearly cancel into weight differences of up to ~1e-3 x lr per step
(measured: 1.9e-6 after 4 steps at lr 2e-3). Tolerance: 1e-5 - a lost micro-batch, a wrong
1/K scale or an unsynchronised gradient moves weights by ~lr = 2e-3. Accumulation itself is
compared with one large batch in test_training_accumulate.py.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import torch

from instseg.checkpoint import load_checkpoint
from instseg.models.factory import build_model
from instseg.train.distributed import DistContext, GlobalBatchSampler
from instseg.predict.evaluation import evaluate_dataset
from instseg.train.trainer import Trainer
from instseg.errors import ConfigError
from training_support import PYTHON, assert_same_training, cli_args, parameters, recording_console, subprocess_env, tiny_config

# Runs under torchrun: the real CLI, plus a dump of every rank's final state dict.
DUMPING_LAUNCHER = textwrap.dedent("""
    import sys
    import torch
    from instseg.train import trainer as training

    fit = training.Trainer.fit
    dump_dir = sys.argv[1]

    def fit_and_dump(self):
        result = fit(self)
        torch.save(self.model.state_dict(), f"{dump_dir}/rank{self.dist.rank}.pt")
        return result

    training.Trainer.fit = fit_and_dump
    from instseg.cli.main import main

    sys.argv = ["instseg", *sys.argv[2:]]
    main()
""")


def test_sampler_splits_global_batches_like_accumulation():
    data = list(range(23))
    two_procs = [GlobalBatchSampler(data, batch_size=2, accumulate=1, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    one_proc = GlobalBatchSampler(data, batch_size=2, accumulate=2, seed=3)
    for s in (*two_procs, one_proc):
        s.set_epoch(4)
    ranks = [list(s) for s in two_procs]
    single = list(one_proc)
    assert one_proc.steps_per_epoch == two_procs[0].steps_per_epoch == 23 // 4
    assert len(single) == len(one_proc) == 20 and len(ranks[0]) == len(two_procs[0]) == 10
    for step in range(5):  # rank r's batch of a step is the single process's micro-batch r
        assert ranks[0][2 * step:2 * step + 2] == single[4 * step:4 * step + 2]
        assert ranks[1][2 * step:2 * step + 2] == single[4 * step + 2:4 * step + 4]
    assert len(set(single)) == 20  # no index twice in an epoch
    one_proc.set_epoch(5)
    assert list(one_proc) != single  # reshuffled every epoch
    one_proc.set_epoch(4)
    one_proc.set_start(3)
    assert list(one_proc) == single[12:] and len(one_proc) == 8


def test_sampler_fills_one_global_batch_from_a_small_dataset():
    sampler = GlobalBatchSampler(list(range(3)), batch_size=2, accumulate=2)
    assert sampler.steps_per_epoch == 1 and sorted(set(sampler)) == [0, 1, 2] and len(list(sampler)) == 4


def test_launch_environment_is_read_and_checked():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    ctx = DistContext.from_env(env)
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (1, 2, True, False)
    assert not DistContext.from_env({}).enabled
    with pytest.raises(ConfigError, match="inconsistent launch"):
        DistContext.from_env({**env, "RANK": "2"})


def test_sync_bn_on_cpu_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        Trainer(tiny_config(tmp_path, sync_bn=True), recording_console(),
                dist=DistContext(rank=0, world_size=2, local_world_size=2))


@pytest.mark.parametrize("objective", ["discriminative", "spatial"])
def test_two_gloo_processes_match_each_other_and_one_process(tmp_path, objective):
    # 2 processes x accumulate 2 x batch 2 (no_sync on the first micro-batch) against
    # 1 process x accumulate 4 x batch 2: global batch 8, 2 steps per epoch, 2 epochs.
    ddp = tiny_config(tmp_path / "ddp", train_size=16, epochs=2, accumulate=2, objective=objective)
    launcher = tmp_path / "launch.py"
    launcher.write_text(DUMPING_LAUNCHER)
    result = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
         str(tmp_path), "train", *cli_args(ddp)],
        capture_output=True, text=True, env=subprocess_env(), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes (gloo)" in result.stderr and "global batch 8 = 2 x accumulate 2 x batch 2" in result.stderr
    assert result.stdout.count("run directory:") == 1  # only rank 0 prints the summary

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:  # weights and (averaged) BatchNorm statistics identical on both ranks
        assert torch.equal(ranks[0][key], ranks[1][key]), key

    run = tmp_path / "ddp" / "run"
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["run"]  # one run directory, written once
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["step"] == 4

    reference = Trainer(tiny_config(tmp_path / "single", train_size=16, epochs=2, accumulate=4, objective=objective),
                        recording_console())
    reference.fit()
    expected = parameters(reference.model.state_dict(), reference.model)
    got = parameters(ranks[0], reference.model)
    assert_same_training(got, expected, reference.config.lr)
    single_lines = [json.loads(line) for line in (tmp_path / "single/run/metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(lines, single_lines):  # train losses reduced over both processes
        assert mine["train"]["loss"] == pytest.approx(theirs["train"]["loss"], rel=1e-6)

    # Validation was split across the processes (2 + 1 images) and gathered: it scores like
    # one process evaluating the final weights on all 3 images.
    model = build_model(load_checkpoint(run / "last.pt"))
    whole = evaluate_dataset(model, reference.val_set, torch.device("cpu"), params=reference.cluster,
                             image_size=reference.config.image_size).summary()
    assert lines[-1]["val"] == pytest.approx({k: v["mean"] for k, v in whole.items()})
