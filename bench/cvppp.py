"""Real leaves: train each model on CVPPP A1 with the README's recipe and print it beside the reference table.

    python bench/cvppp.py --data /tmp/cvppp/A1 --models unet-cbam            # one row (~25 min on 2 cores)
    python bench/cvppp.py --data /tmp/cvppp/A1 --models unet segnet --train-args "--epochs 30"
    python bench/cvppp.py --data /tmp/cvppp/A1 --table-only                  # the rows measured so far

Each model trains with `instseg train --data cvppp:A1 --val-list splits/cvppp_a1_val.txt` (the
`cvppp` preset: the recipe a user gets), as a subprocess, into `--out/<model>`; its best.pt is
then scored on the 28 validation plants by `instseg evaluate`'s own code
(`predict.evaluation.evaluate_model`). Rows accumulate in `--out/results.json`, so models can run
one at a time. "min to ref" is the training time (wall, validation included) at the end of the
first epoch whose validation SBD reached the reference row's SBD.

Stage the data first (never commit it: its licence forbids redistribution):
    bash ../shared/data/stage-cvppp-a1.sh GIT_DIR /tmp/cvppp
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

from instseg.io.atomic import atomic_write_text
from instseg.predict.evaluation import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
VAL_LIST = ROOT / "splits" / "cvppp_a1_val.txt"
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


def train(model: str, data: Path, out: Path, extra: list[str]) -> float:
    """Run `instseg train` for one model; its wall time in seconds."""
    if (out / model).exists():
        sys.exit(f"error: {out / model} exists: move it away, or score it with --evaluate-only")
    command = [sys.executable, "-m", "instseg", "train", "--model", model, "--data", f"cvppp:{data}",
               "--val-list", str(VAL_LIST), "--out", str(out), "--name", model, *extra]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - start


def first_reaching(run: Path, sbd: float) -> float | None:
    """Training seconds at the end of the first epoch whose validation SBD reached `sbd`."""
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["val"]["sbd"] >= sbd:
            return record["seconds"]
    return None


def measure(model: str, run: Path, wall: float | None) -> dict:
    report = evaluate_model(run / "best.pt")
    summary = report.summary
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = REFERENCE.get(model)
    return {
        "model": model, "sbd": summary["sbd"]["mean"], "sbd_std": summary["sbd"]["std"],
        "fg_dice": summary["fg_dice"]["mean"], "dic": summary["dic"]["mean"], "abs_dic": summary["abs_dic"]["mean"],
        "train_minutes": records[-1]["seconds"] / 60, "wall_minutes": None if wall is None else wall / 60,
        "epochs": len(records), "best_epoch": report.source.get("epoch"),
        "minutes_to_reference": _minutes(first_reaching(run, reference[0] if reference else TARGET_SBD)),
        "device": config["device"], "preset": config["config"].get("preset"),
        "image_size": config["config"]["image_size"],
    }


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | ref SBD | ref FG Dice | ref DiC | SBD | FG Dice | DiC | \\|DiC\\| | train min | "
             "min to ref SBD | epochs (best) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in [m for m in MODELS if m in rows] + sorted(set(rows) - set(MODELS)):
        row = rows[model]
        ref = REFERENCE.get(model, (None, None, None))
        target = "" if model in REFERENCE else f" (target {TARGET_SBD})"
        lines.append(
            f"| {model} | {_cell(ref[0], 4)}{target} | {_cell(ref[1], 4)} | {_cell(ref[2], 4)} | "
            f"**{row['sbd']:.3f}** ± {row['sbd_std']:.3f} | {row['fg_dice']:.3f} | {row['dic']:+.2f} | "
            f"{row['abs_dic']:.2f} | {row['train_minutes']:.1f} | {_cell(row['minutes_to_reference'], 1)} | "
            f"{row['epochs']} ({row['best_epoch']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/cvppp/A1"), help="The staged A1 folder.")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/cvppp-bench"), help="Runs and results.json.")
    parser.add_argument("--train-args", default="", help="Extra `instseg train` options, e.g. \"--epochs 30\".")
    parser.add_argument("--table-only", action="store_true", help="Print the rows measured so far.")
    parser.add_argument("--evaluate-only", action="store_true", help="Score existing runs in --out, no training.")
    args = parser.parse_args()
    results_path = args.out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not args.table_only:
        if not (args.data / "plant001_rgb.png").exists():
            sys.exit(f"error: {args.data}: no staged CVPPP A1 (see the module docstring)")
        for model in args.models:
            wall = None if args.evaluate_only else train(model, args.data, args.out, shlex.split(args.train_args))
            rows[model] = measure(model, args.out / model, wall)
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(results_path, json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
