"""A run directory and the files it owns: `config.json` (written first, which also proves the
directory is writable), `metrics.jsonl` (one line per epoch), `last.pt` and `best.pt`, the
epoch pictures. Every write is atomic; the disk is checked before the first step.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from instseg.checkpoint import Checkpoint, save_checkpoint
from instseg.errors import ConfigError, TrainingError
from instseg.io.atomic import atomic_write_bytes, atomic_write_text
from instseg.version import __version__

OPTIMIZER_SLOTS = 2  # Adam(W) keeps two tensors per parameter, so a checkpoint is ~3x the weights


def make_run_dir(out: str | Path, model: str, name: str | None = None) -> Path:
    """A new directory `<out>/<name or model-timestamp>[-N]`, never an existing one."""
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {root}: cannot create directory ({exc.strerror})") from exc
    base = name or f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
        run = root / f"{base}{suffix}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"--out {root}: cannot write there ({exc.strerror})") from exc
    raise ConfigError(f"--out {root}: too many runs named {base}")


def check_free_space(run_dir: Path, needed: int) -> None:
    """Fail before training when the disk cannot take the checkpoints the run will write."""
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise ConfigError(f"--out {run_dir.parent}: only {free / 2**20:.1f} MiB free on that disk, "
                          f"the checkpoints of this run need about {needed / 2**20:.1f} MiB")


def config_record(config: dict[str, Any], model: dict[str, Any], plugins: dict[str, str], device: str,
                  processes: int) -> dict[str, Any]:
    """What config.json holds: every option, how the model is built, and where the run ran."""
    import torch

    return {"instseg_version": __version__, "config": config, "model": model, "plugins": plugins, "device": device,
            "processes": processes, "torch_version": torch.__version__,
            "created": datetime.now().isoformat(timespec="seconds")}


class RunDirectory:
    """The files of one training run (written by rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, out: str | Path, model: str, name: str | None, record: dict[str, Any]) -> "RunDirectory":
        """A new run directory holding `record` as config.json."""
        run = cls(make_run_dir(out, model, name))
        try:
            atomic_write_text(run.path / "config.json", json.dumps(record, indent=2))
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot write {run.path / 'config.json'} ({exc.strerror or exc})") from exc
        return run

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def check_disk(self, weight_bytes: int) -> None:
        """The directory takes a write and has room for last.pt, best.pt and a temporary copy."""
        probe = self.path / ".write-test"
        try:
            atomic_write_bytes(probe, b"instseg")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write in {self.path} ({exc.strerror or exc})") from exc
        check_free_space(self.path, 3 * weight_bytes * (1 + OPTIMIZER_SLOTS) + 2**20)

    def append_metrics(self, record: dict[str, Any]) -> None:
        path = self.metrics_path
        previous = path.read_text() if path.exists() else ""
        atomic_write_text(path, previous + json.dumps(record) + "\n")

    def trim_metrics(self, completed_epochs: int) -> None:
        """Drop lines of epochs the checkpoint does not cover (written just before an interruption)."""
        path = self.metrics_path
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["epoch"] <= completed_epochs]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def save_checkpoints(self, checkpoint: Checkpoint, best: bool) -> None:
        """last.pt, and best.pt too when `best`; a failed write leaves the previous file intact."""
        for name in ["last.pt", "best.pt"] if best else ["last.pt"]:
            path = self.path / name
            try:
                save_checkpoint(path, checkpoint)
            except OSError as exc:
                raise TrainingError(f"could not write {path} ({exc.strerror or exc}); "
                                    f"the previous {name}, if any, is intact") from exc
