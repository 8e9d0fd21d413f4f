"""Nuclei by the hundred: train on DSB2018 stage1_train with the `nuclei` recipe and score the
fixed 10% validation split, overall and per modality, with each clustering method.

    python bench/dsb2018.py --data PATH/DSB                        # train + score (~1 h on 2 cores)
    python bench/dsb2018.py --data PATH/DSB --evaluate-only        # score the run in --out again
    python bench/dsb2018.py --data PATH/DSB --run RUN_DIR          # score any run on the split
    python bench/dsb2018.py --cost                                     # clustering ms at 300 nuclei
                                                                       # (seeds: bench/seed_clustering.py)
    python bench/dsb2018.py --large 4000                               # predict + infer a 4000 px mosaic

Training is `instseg train --preset nuclei --data folder:DSB --val-list splits/dsb2018_val.txt`
(what a user types; add `--train-args "--objective spatial"` for the spatial objective), as a
subprocess; last.pt (no epoch chosen on the scored images; `--checkpoint best.pt` for the epoch
validation picked) is then scored by `instseg evaluate`'s own code
(`instseg.load(run).evaluate()`) once per clustering method, so the table shows what the
method is worth on the same network outputs. Modalities come from the staged manifest.csv
(grey fluorescence vs colour histology / brightfield). Metrics: the competition's mean AP over
IoU 0.5:0.05:0.95, AP@0.5, precision and recall at IoU 0.5, SBD, FG Dice, |DiC|.

`--large N` tiles validation images into an N x N mosaic, exports the run to ONNX (if it has no
model.onnx yet) and runs `instseg predict` and `instseg infer` on it as subprocesses: wall time,
peak memory (the child's max RSS), instances, and the SBD between the two label maps.

The data: DSB2018 stage1_train (BBBC038, CC0) as a folder dataset, as docs/microscopy.md shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import instseg
from instseg.instances.clustering import METHODS_FOR, ClusterParams, cluster_embeddings, embeddings_read_by
from instseg.io.atomic import atomic_write_text
from instseg.metrics.scores import summarize

ROOT = Path(__file__).resolve().parents[1]
VAL_LIST = ROOT / "splits" / "dsb2018_val.txt"
METHODS = ("regions", "kmeans", "meanshift", "seeds")
COLUMNS = ("ap", "ap50", "precision50", "recall50", "sbd", "fg_dice", "abs_dic")
TARGETS = {"ap": 0.60, "ap50": 0.85}  # issue 24: mean AP on all 67 images, AP@0.5 on the grey ones


def train(data: Path, out: Path, name: str, extra: list[str]) -> float:
    """Run `instseg train --preset nuclei`; its wall time in seconds."""
    if (out / name).exists():
        sys.exit(f"error: {out / name} exists: move it away, or score it with --evaluate-only")
    command = [sys.executable, "-m", "instseg", "train", "--preset", "nuclei", "--data", f"folder:{data}",
               "--val-list", str(VAL_LIST), "--out", str(out), "--name", name, *extra]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - start


def modalities(data: Path) -> dict[str, str]:
    """Image stem -> "grey" or "colour", from the staged manifest."""
    with open(data / "manifest.csv", newline="") as handle:
        return {row["stem"]: "grey" if row["is_gray"] == "1" else "colour" for row in csv.DictReader(handle)}


def score(run: Path, data: Path, method: str, kinds: dict[str, str], tiling: tuple[int, int] | None = None,
          checkpoint: str = "last.pt") -> dict[str, dict[str, float]]:
    """Mean metrics of one checkpoint on the validation split with one clustering method, per modality."""
    tile, overlap = tiling or (None, None)
    model = instseg.load(run / checkpoint)
    model.set_tiling(tile, overlap)
    report = model.evaluate(f"folder:{data}", val_list=str(VAL_LIST), cluster={"method": method})
    groups = {"all": report.rows}
    for kind in ("grey", "colour"):
        groups[kind] = [row for row in report.rows if kinds.get(row.name) == kind]
    return {group: {k: v["mean"] for k, v in summarize(r.scores for r in rows).items()} | {"images": len(rows)}
            for group, rows in groups.items() if rows}


def run_methods(cluster: str) -> list[str]:
    """The methods that read a run's embeddings (an `auto` run that did not finish: discriminative)."""
    family = "discriminative" if cluster == "auto" else embeddings_read_by(cluster)
    return [m for m in METHODS if m in METHODS_FOR[family]]


def clustering_cost(repeats: int = 5) -> dict[str, float]:
    """ms per 512 x 512 image holding 300 nuclei (150 touching pairs), 32-D embeddings, for each method."""
    rng = np.random.default_rng(0)
    truth = np.zeros((512, 512), np.int32)
    embedding = np.zeros((32, 512, 512), np.float32)
    for i in range(150):
        y, x = divmod(i, 15)
        for j in range(2):
            box = np.s_[y * 34 + 4:y * 34 + 16, x * 34 + 4 + 12 * j:x * 34 + 16 + 12 * j]
            truth[box] = 2 * i + j + 1
            embedding[(slice(None), *box)] = rng.normal(0, 2, (32, 1, 1))
    embedding += rng.normal(0, 0.1, embedding.shape).astype(np.float32)
    costs = {}
    for method in METHODS_FOR["discriminative"]:
        params = ClusterParams(method=method, full_resolution=False)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            cluster_embeddings(embedding, truth > 0, 300, params)
            times.append(time.perf_counter() - start)
        costs[method] = 1000 * float(np.median(times))
    return costs


def mosaic(data: Path, side: int, path: Path) -> None:
    """An RGB side x side image tiled from the validation images (grey ones, as a slide would be)."""
    kinds = modalities(data)
    stems = [s for s in VAL_LIST.read_text().split() if not s.startswith("#") and kinds.get(s) == "grey"]
    canvas = np.zeros((side, side, 3), np.uint8)
    y = x = row_height = 0
    for stem in stems * (1 + side * side // (256 * 256 * len(stems))):
        image = np.asarray(Image.open(data / "images" / f"{stem}.png").convert("RGB"))
        h, w = image.shape[:2]
        if x + w > side:
            y, x, row_height = y + row_height, 0, 0
        if y >= side:
            break
        block = image[:side - y, :side - x]
        canvas[y:y + block.shape[0], x:x + block.shape[1]] = block
        x, row_height = x + w, max(row_height, h)
    Image.fromarray(canvas).save(path)


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run a command; its wall seconds and peak resident memory in MiB (max RSS of the child)."""
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def large_image(run: Path, data: Path, side: int, work: Path) -> None:
    """Predict and infer one side x side mosaic: time, peak memory, instances, agreement."""
    from instseg.io.images import read_label_map
    from instseg.metrics.scores import symmetric_best_dice

    work.mkdir(parents=True, exist_ok=True)
    image = work / f"mosaic{side}.png"
    if not image.exists():
        mosaic(data, side, image)
    onnx = run / "model.onnx"
    if not onnx.exists():
        subprocess.run([sys.executable, "-m", "instseg", "export", str(run), "--onnx", "-o", str(onnx)], check=True)
    results = {}
    for verb, model in (("infer", onnx), ("predict", run)):
        out = work / verb
        seconds, peak = run_measured([sys.executable, "-m", "instseg", verb, str(model), str(image), "--out", str(out),
                                      "--overwrite", "--no-overlay"])
        results[verb] = read_label_map(out / f"{image.stem}_label.png")
        print(f"{verb}: {side}x{side} in {seconds:.1f} s, peak memory {peak:.0f} MiB (max RSS of the children so far), "
              f"{int(results[verb].max())} instances")
    print(f"SBD between predict and infer: {symmetric_best_dice(results['predict'], results['infer']):.4f}")


def table(rows: dict) -> str:
    lines = [f"| run | clustering | images | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 3) + "|"]
    for run, by_method in rows.items():
        for method, groups in by_method["scores"].items():
            for group, values in groups.items():
                cells = " | ".join(f"{values[c]:.3f}" for c in COLUMNS)
                lines.append(f"| {run} | {method} ({group}) | {values['images']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="The DSB2018 folder dataset (images/, masks/).")
    parser.add_argument("--out", type=Path, default=Path("dsb-bench"), help="Runs and results.json.")
    parser.add_argument("--name", default="unet-cbam", help="Run name in --out.")
    parser.add_argument("--run", type=Path, help="Score this run directory instead of --out/--name.")
    parser.add_argument("--train-args", default="", help="Extra `instseg train` options, e.g. \"--epochs 10\".")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="Clustering methods to score (default: every one that reads the run's embeddings).")
    parser.add_argument("--checkpoint", default="last.pt", choices=("last.pt", "best.pt"),
                        help="last.pt: no epoch chosen on the scored images (default); best.pt: picked on them.")
    parser.add_argument("--evaluate-only", action="store_true", help="Score the existing run, no training.")
    parser.add_argument("--tile", type=int, nargs=2, metavar=("TILE", "OVERLAP"),
                        help="Tiles for the scoring (default: the runner's 1024 / 128); a row of its own.")
    parser.add_argument("--cost", action="store_true", help="Only time the clustering at 300 nuclei.")
    parser.add_argument("--large", type=int, metavar="N", help="Only predict + infer an N x N mosaic with the run.")
    args = parser.parse_args()
    if args.large:
        large_image(args.run or args.out / args.name, args.data, args.large, args.out / "large")
        return
    if args.cost:
        for method, ms in clustering_cost().items():
            print(f"{method:10s} {ms:8.1f} ms per 512x512 image with 300 nuclei")
        return
    if not (args.data / "manifest.csv").exists():
        sys.exit(f"error: {args.data}: no staged DSB2018 (see the module docstring)")
    run = args.run or args.out / args.name
    wall = None
    if args.run is None and not args.evaluate_only:
        wall = train(args.data, args.out, args.name, shlex.split(args.train_args))
    kinds = modalities(args.data)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    row = {"run": str(run), "train_minutes": records[-1]["seconds"] / 60, "wall_minutes": wall and wall / 60,
           "epochs": len(records), "cluster": config["config"]["cluster"], "device": config["device"],
           "objective": config["config"].get("objective", "discriminative"), "checkpoint": args.checkpoint,
           "scores": {method: score(run, args.data, method, kinds, args.tile, args.checkpoint)
                      for method in args.methods or run_methods(config["config"]["cluster"])}}
    results_path = args.out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows[run.name + (f" tiles {args.tile[0]}/{args.tile[1]}" if args.tile else "")] = row
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_path, json.dumps(rows, indent=2))
    print(table(rows))
    best = row["scores"][row["cluster"]]["all"] if row["cluster"] in row["scores"] else None
    if best is not None:
        print(f"\n{run.name} ({row['objective']}, {args.checkpoint}): {row['train_minutes']:.1f} min of training; "
              f"the run's clustering ({row['cluster']}): "
              + ", ".join(f"{k} {best[k]:.3f} (target {t})" for k, t in TARGETS.items()))


if __name__ == "__main__":
    main()
