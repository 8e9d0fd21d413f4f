"""Training speed at 256 px, side by side: which options raise training images/s on this machine.

    python bench/train_speed.py --data cvppp:PATH/A1                 # unet-cbam, every variant
    python bench/train_speed.py --variants baseline compile --epochs 4

Each variant is one `instseg train` run of the `cvppp` preset (working size 256, batch 8, bf16
autocast where the CPU has it) for `--epochs` epochs, one after the other in this process, so
the ratios are measured side by side on the same machine. The figure is the steady state: the
images/s of the last epoch (the first pays for torch.compile's compilation and warm caches),
from the run's own metrics.jsonl; the first epoch's is printed beside it. On a CPU a faster
epoch is more epochs in the same budget, which is accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> extra `instseg train` options on top of the cvppp preset
    "baseline": [],
    "compile": ["--compile"],
    "workers-1": ["--workers", "1"],
    "workers-2": ["--workers", "2"],
    "batch-16": ["--batch-size", "16", "--lr", "2.8e-3"],
    "fp32": ["--no-amp"],
}


def run(variant: str, model: str, data: str, epochs: int, out: Path) -> dict:
    command = [sys.executable, "-m", "instseg", "train", "--model", model, "--data", data, "--preset", "cvppp",
               "--epochs", str(epochs), "--cluster", "kmeans", "--out", str(out), "--name", variant,
               *VARIANTS[variant]]
    if data.startswith("cvppp:"):
        command += ["--val-list", str(ROOT / "splits" / "cvppp_a1_tune.txt")]
    else:
        command += ["--image-size", "256", "--train-size", "96", "--val-size", "4"]
    print("$", shlex.join(command), flush=True)
    done = subprocess.run(command, env={**os.environ, "COLUMNS": "100"}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:  # one variant failing (e.g. no compiler for --compile) leaves the others
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {variant} failed (exit {done.returncode}): {last}", flush=True)
        return {"variant": variant, "first": float("nan"), "last": float("nan"), "device": "-"}
    records = [json.loads(line) for line in (out / variant / "metrics.jsonl").read_text().splitlines()]
    device = json.loads((out / variant / "config.json").read_text())["device"]
    return {"variant": variant, "first": records[0]["images_per_second"], "last": records[-1]["images_per_second"],
            "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="A --data spec, e.g. cvppp:PATH/A1 (default synthetic).")
    parser.add_argument("--model", default="unet-cbam")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run(variant, args.model, args.data, args.epochs, Path(scratch)) for variant in args.variants]
    base = rows[0]["last"]
    device = next((row["device"] for row in rows if row["device"] != "-"), "-")
    print(f"\n{args.model}, {args.data}, 256 px, {args.epochs} epochs per variant; device: {device}\n")
    print("| variant | options | images/s (last epoch) | vs first row | images/s (epoch 1) |")
    print("|---|---|---|---|---|")
    for row in rows:
        options = " ".join(VARIANTS[row["variant"]]) or "(the preset)"
        print(f"| {row['variant']} | `{options}` | {row['last']:.2f} | {row['last'] / base:.2f}x | {row['first']:.2f} |")


if __name__ == "__main__":
    main()
