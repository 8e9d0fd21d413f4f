"""Real leaves: train each model on CVPPP A1 with the README's recipe and print it beside the reference table.

    python bench/cvppp.py --data PATH/A1 --split tune --tag dice --train-args "--loss-weight instance=1"
    python bench/cvppp.py --data PATH/A1 --models unet-cbam                  # the reported row (~40 min on 2 cores)
    python bench/cvppp.py --data PATH/A1 --split tune --tag synth6 --pretrain-epochs 6 --train-args "--epochs 20"
    python bench/cvppp.py --out cvppp-bench --table-only                      # the rows measured so far

Two protocols, so that no recipe value is chosen on the plants it is reported on:
- `--split tune` (ranking levers): train on 80 of the 100 training plants and score the other
  20 (`splits/cvppp_a1_tune.txt`); the 28 validation plants are not even in the data folder
  (a folder of links to the 100 is made under `--out`).
- `--split val` (the reported figure, once per final recipe): train on all 100 with
  `--val-list splits/cvppp_a1_val.txt` (the `cvppp` preset: the recipe a user gets), then score
  the 28 plants with the *last* epoch's weights (last.pt), never best.pt, which is picked on
  those same 28; clustering is the method given by `--cluster` (chosen on the tuning split),
  not `auto`, which would also choose on them.

Each run is an `instseg train` subprocess into `--out/<split>/<model>[-<tag>]`, scored by
`instseg evaluate`'s own code (`instseg.load(...).evaluate()`). Rows accumulate in
`--out/results.json`, so runs can go one at a time. "min to ref" is the training time (wall,
validation included) at the end of the first epoch whose validation SBD reached the reference
row's SBD (read only, never used to choose).

`--pretrain-epochs N` first trains the same model on the synthetic leaves for N epochs (the
`cvppp` preset's size and schedule, 384 renders per epoch; once per model, into
`--out/pretrain/<model>-synthN`, reused by later runs) and fine-tunes from its last.pt with
`--weights`; the row's training minutes then add the pretraining's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import instseg
from instseg.io.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
VAL_LIST = ROOT / "splits" / "cvppp_a1_val.txt"
TUNE_LIST = ROOT / "splits" / "cvppp_a1_tune.txt"
SCORED = "last.pt"  # the last epoch: no epoch is chosen on the plants that are scored
# The reference implementation's README (gymoon10, GPU, 2022): SBD, FG Dice, its "DiC" column.
REFERENCE = {
    "reseg": (0.8599, 0.9669, 0.7143),
    "segnet": (0.8645, 0.9695, 0.6071),
    "unet": (0.8656, 0.9703, 0.5713),
    "unet-cbam": (0.8813, 0.9708, 0.7143),
}
REFERENCE["reseg-coord"] = REFERENCE["reseg"]
TARGET_SBD = 0.86  # the bar for the models without a reference row (deeplabv3, srhg)
MODELS = ("unet-cbam", "unet", "segnet", "reseg-coord", "deeplabv3", "stacked-recurrent-hourglass")


def stems(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tuning_data(data: Path, out: Path) -> Path:
    """A folder of links to the 100 training plants' files: the 28 validation plants left out."""
    folder = out / "tune-data" / "A1"
    held_out = set(stems(VAL_LIST))
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(data.glob("plant*_*.png")):
        if path.name.split("_")[0] not in held_out and not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    return folder


def run_shown(command: list[str]) -> None:
    """Print a subprocess's command line, then run it (a failure stops the bench)."""
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "COLUMNS": "100"})


def epoch_records(run: Path) -> list[dict]:
    """A run's metrics.jsonl: one record per epoch."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train(name: str, model: str, data: Path, val_list: Path, out: Path, extra: list[str]) -> float:
    """Run `instseg train` for one model; its wall time in seconds."""
    if (out / name).exists():
        sys.exit(f"error: {out / name} exists: move it away, or score it with --evaluate-only")
    command = [sys.executable, "-m", "instseg", "train", "--model", model, "--data", f"cvppp:{data}",
               "--val-list", str(val_list), "--out", str(out), "--name", name, *extra]
    start = time.perf_counter()
    run_shown(command)
    return time.perf_counter() - start


def pretrain(model: str, epochs: int, out: Path, may_train: bool) -> tuple[Path, float]:
    """The synthetic pretraining's weights for `model` (trained unless already there) and its minutes."""
    run = out / "pretrain" / f"{model}-synth{epochs}"
    if not (run / "last.pt").exists():
        if not may_train:
            sys.exit(f"error: {run / 'last.pt'} is missing: run without --evaluate-only to pretrain")
        command = [sys.executable, "-m", "instseg", "train", "--model", model, "--data", "synthetic",
                   "--preset", "cvppp", "--epochs", str(epochs), "--train-size", "384", "--val-size", "16",
                   "--out", str(run.parent), "--name", run.name]
        run_shown(command)
    return run / "last.pt", epoch_records(run)[-1]["seconds"] / 60


def first_reaching(run: Path, sbd: float) -> float | None:
    """Training seconds at the end of the first epoch whose validation SBD reached `sbd`."""
    for record in epoch_records(run):
        if record["val"]["sbd"] >= sbd:
            return record["seconds"]
    return None


def measure(model: str, run: Path, wall: float | None, split: str, cluster: str, train_args: str,
            pretrain_epochs: int = 0, pretrain_minutes: float = 0.0) -> dict:
    report = instseg.load(run / SCORED).evaluate(cluster={"method": cluster})
    summary = report.summary
    config = json.loads((run / "config.json").read_text())
    records = epoch_records(run)
    reference = REFERENCE.get(model)
    return {
        "model": model, "split": split, "scored": f"{SCORED} (epoch {report.source.get('epoch')})",
        "cluster": cluster, "train_args": train_args, "sbd": summary["sbd"]["mean"], "sbd_std": summary["sbd"]["std"],
        "fg_dice": summary["fg_dice"]["mean"], "dic": summary["dic"]["mean"], "abs_dic": summary["abs_dic"]["mean"],
        "train_minutes": records[-1]["seconds"] / 60 + pretrain_minutes, "pretrain_epochs": pretrain_epochs,
        "pretrain_minutes": pretrain_minutes,
        "wall_minutes": None if wall is None else wall / 60,
        "epochs": len(records),
        "minutes_to_reference": _minutes(first_reaching(run, reference[0] if reference else TARGET_SBD)),
        "device": config["device"], "preset": config["config"].get("preset"),
        "image_size": config["config"]["image_size"],
    }


def save_row(results: Path, key: str, row: dict) -> dict[str, dict]:
    """Add one row to results.json as it is on disk now (another bench run may have added rows since)."""
    rows = json.loads(results.read_text()) if results.exists() else {}
    rows[key] = row
    results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results, json.dumps(rows, indent=2))
    return rows


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = ["| run | split | ref SBD | ref FG Dice | ref DiC | SBD | FG Dice | DiC | \\|DiC\\| | train min | "
             "min to ref SBD | scored |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (rows[k].get("split", "val"), k)):
        row = rows[key]
        model = row["model"]
        ref = REFERENCE.get(model, (None, None, None))
        target = "" if model in REFERENCE else f" (target {TARGET_SBD})"
        lines.append(
            f"| {key} | {row.get('split', 'val')} | {_cell(ref[0], 4)}{target} | {_cell(ref[1], 4)} | {_cell(ref[2], 4)} | "
            f"**{row['sbd']:.3f}** ± {row['sbd_std']:.3f} | {row['fg_dice']:.3f} | {row['dic']:+.2f} | "
            f"{row['abs_dic']:.2f} | {row['train_minutes']:.1f} | {_cell(row['minutes_to_reference'], 1)} | "
            f"{row.get('scored', row.get('best_epoch'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="The A1 folder (plantNNN_rgb.png, plantNNN_label.png).")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("cvppp-bench"), help="Runs and results.json.")
    parser.add_argument("--split", choices=("tune", "val"), default="val",
                        help="tune: 80 plants -> the 20 tuning plants; val: 100 -> the 28 (reported).")
    parser.add_argument("--tag", default="", help="Names the run <model>-<tag> (levers on the tuning split).")
    parser.add_argument("--cluster", default="kmeans", help="Clustering of the scored predictions (fixed).")
    parser.add_argument("--train-args", default="", help="Extra `instseg train` options, e.g. \"--epochs 30\".")
    parser.add_argument("--pretrain-epochs", type=int, default=0,
                        help="Pretrain on the synthetic leaves for this many epochs first, then fine-tune (0: none).")
    parser.add_argument("--table-only", action="store_true", help="Print the rows measured so far.")
    parser.add_argument("--evaluate-only", action="store_true", help="Score existing runs in --out, no training.")
    args = parser.parse_args()
    results_path = args.out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not args.table_only:
        if args.data is None or not (args.data / "plant001_rgb.png").exists():
            sys.exit(f"error: --data {args.data}: not a CVPPP A1 folder")
        data = tuning_data(args.data, args.out) if args.split == "tune" else args.data
        val_list = TUNE_LIST if args.split == "tune" else VAL_LIST
        runs = args.out / args.split
        extra = ["--cluster", args.cluster, *shlex.split(args.train_args)]
        for model in args.models:
            name = f"{model}-{args.tag}" if args.tag else model
            weights, pretrain_minutes = [], 0.0
            if args.pretrain_epochs:
                last, pretrain_minutes = pretrain(model, args.pretrain_epochs, args.out, not args.evaluate_only)
                weights = ["--weights", str(last)]
            wall = None if args.evaluate_only else train(name, model, data, val_list, runs, [*extra, *weights])
            row = measure(model, runs / name, wall, args.split, args.cluster, args.train_args,
                          args.pretrain_epochs, pretrain_minutes)
            rows = save_row(results_path, f"{args.split}/{name}", row)
    print(table(rows))


if __name__ == "__main__":
    main()
