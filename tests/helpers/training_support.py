"""Shared by the training and CLI lanes: tiny runs that finish in a second or two.

Helpers only; the fixtures built on them (one torch thread per test or module) live in the
lanes' conftest.py files (tests/training/conftest.py, tests/cli/conftest.py)."""

from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from rich.console import Console

from instseg.objectives import objective_spec, with_objective
from instseg.train.config import TrainConfig

# fp32 (amp=False): these runs compare weights to 1e-5, which bf16 autocast (on CPUs that have
# it) would not meet; the bf16 path has its own test.
TINY = dict(model="unet-cbam", width=4, image_size=32, train_size=8, val_size=3, batch_size=2, epochs=1,
            workers=0, device="cpu", amp=False)


def tiny_config(out: Path, **overrides) -> TrainConfig:
    """A tiny run; an `objective` override brings the channels and grid it needs, as the CLI's does."""
    values = {**TINY, "out": str(out), "name": "run", **overrides}
    return TrainConfig(**with_objective(values, set(overrides), objective_spec(values.get("objective", "discriminative"))))


def cli_args(config: TrainConfig) -> list[str]:
    """The `instseg train` options that reproduce a tiny config."""
    return ["--model", config.model, "--width", str(config.width), "--image-size", str(config.image_size),
            "--train-size", str(config.train_size), "--val-size", str(config.val_size),
            "--batch-size", str(config.batch_size), "--accumulate", str(config.accumulate),
            "--epochs", str(config.epochs), "--device", config.device, "--out", config.out, "--name", config.name,
            "--objective", config.objective, "--amp" if config.amp else "--no-amp"]


def recording_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def console_text(console: Console) -> str:
    return console.file.getvalue()


@contextmanager
def one_thread() -> Iterator[None]:
    """Runs compared bit for bit must use the same thread count (reductions split differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "INSTSEG_DISABLE_PLUGINS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def parameters(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights of a state dict (its parameters, not BatchNorm's running statistics)."""
    names = {name for name, _ in model.named_parameters()}
    return {k: v for k, v in state_dict.items() if k in names}


def assert_same_training(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lr: float) -> None:
    """Two ways of computing the same optimizer steps gave the same weights, up to rounding.

    Adam(W) divides each gradient by its own running magnitude, so a gradient that is ~0 in exact
    arithmetic has a rounding-noise sign, and its parameter may move by up to ~lr per step either
    way (how much depends on the CPU's vector kernels: AVX-512 sums in another order than AVX2).
    So: nearly every weight agrees to 1e-5, and none is off by a whole step. A real mismatch
    (another data order, a missing gradient sync or scale) moves most weights by ~lr per step.
    """
    diffs = torch.cat([(got[k].float() - expected[k].float()).abs().flatten() for k in expected])
    close = (diffs <= 1e-5).float().mean().item()
    assert close >= 0.999, f"only {close:.2%} of the weights agree to 1e-5 (largest difference {diffs.max():.3g})"
    assert diffs.max().item() <= 0.5 * lr, f"largest parameter difference {diffs.max():.3g} (lr {lr})"


PYTHON = sys.executable
