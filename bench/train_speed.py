"""Training speed at 256 px, side by side: which options raise training images/s on this machine.

    python bench/train_speed.py --data cvppp:PATH/A1                 # unet-cbam, every variant
    python bench/train_speed.py --variants baseline compile --epochs 4
    python bench/train_speed.py --data cvppp:PATH/A1 --against HEAD~1        # this checkout against a commit

Each variant is one `instseg train` run of the `cvppp` preset (working size 256, batch 8, bf16
autocast where the CPU has it) for `--epochs` epochs, one after the other in this process, so
the ratios are measured side by side on the same machine. The figure is the steady state: the
images/s of the last epoch (the first pays for torch.compile's compilation and warm caches),
from the run's own metrics.jsonl; the first epoch's is printed beside it. On a CPU a faster
epoch is more epochs in the same budget, which is accuracy.

`ddp-2x1` splits the cores the other way: two torchrun processes of one thread each (gloo
DistributedDataParallel), 4 images each, instead of one process with every core.

`--against REF` first runs the preset with the code of git commit REF (a temporary worktree on
PYTHONPATH), so a change to the code itself is measured side by side with what it replaces.
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
    "no-instance-term": ["--loss-weight", "instance=0"],  # the ceiling of making the instance term cheaper
    "ddp-2x1": ["--batch-size", "4"],  # 2 processes x 4 images: the preset's global batch of 8
}
PROCESSES = {"ddp-2x1": 2}  # variants launched by torchrun as that many single-threaded processes (gloo)


def run(variant: str, model: str, data: str, epochs: int, out: Path, source: Path | None = None) -> dict:
    """One variant's training run (with the code under `source`, a checkout's src/, when given)."""
    name = variant if source is None else f"{variant}@ref"
    processes = PROCESSES.get(variant, 1)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "instseg", "train", "--model", model,
               "--data", data, "--preset", "cvppp",
               "--epochs", str(epochs), "--cluster", "kmeans", "--out", str(out), "--name", name,
               *VARIANTS[variant]]
    if data.startswith("cvppp:"):
        command += ["--val-list", str(ROOT / "splits" / "cvppp_a1_tune.txt")]
    else:
        command += ["--image-size", "256", "--train-size", "96", "--val-size", "4"]
    print("$", shlex.join(command), flush=True)
    env = {**os.environ, "COLUMNS": "100", **({"OMP_NUM_THREADS": "1"} if processes > 1 else {})}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:  # one variant failing (e.g. no compiler for --compile) leaves the others
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {variant} failed (exit {done.returncode}): {last}", flush=True)
        return {"variant": name, "options": VARIANTS[variant], "first": float("nan"), "last": float("nan"), "device": "-"}
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    device = json.loads((out / name / "config.json").read_text())["device"]
    return {"variant": name, "options": VARIANTS[variant], "first": records[0]["images_per_second"],
            "last": records[-1]["images_per_second"], "device": device}


def reference_checkout(ref: str, scratch: Path) -> Path:
    """src/ of a temporary git worktree at commit `ref` under `scratch` (main removes it after its run)."""
    folder = scratch / "ref"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref], check=True,
                   stdout=subprocess.DEVNULL)
    return folder / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="A --data spec, e.g. cvppp:PATH/A1 (default synthetic).")
    parser.add_argument("--model", default="unet-cbam")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--against", metavar="REF", help="First run the preset with the code of this git commit.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = []
        if args.against:
            source = reference_checkout(args.against, Path(scratch))
            try:
                rows.append(run("baseline", args.model, args.data, args.epochs, Path(scratch), source))
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(source.parent)], check=True)
        rows += [run(variant, args.model, args.data, args.epochs, Path(scratch)) for variant in args.variants]
    base = rows[0]["last"]
    device = next((row["device"] for row in rows if row["device"] != "-"), "-")
    against = f"; @ref = the code of {args.against}" if args.against else ""
    print(f"\n{args.model}, {args.data}, 256 px, {args.epochs} epochs per variant; device: {device}{against}\n")
    print("| variant | options | images/s (last epoch) | vs first row | images/s (epoch 1) |")
    print("|---|---|---|---|---|")
    for row in rows:
        options = " ".join(row["options"]) or "(the preset)"
        print(f"| {row['variant']} | `{options}` | {row['last']:.2f} | {row['last'] / base:.2f}x | {row['first']:.2f} |")


if __name__ == "__main__":
    main()
