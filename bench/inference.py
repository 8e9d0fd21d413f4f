"""ONNX Runtime against PyTorch eager for every model, and what `instseg infer` delivers end to end.

    python bench/inference.py                                  # the README ONNX tables: all models, 256/512 px, batch 1/8
    python bench/inference.py --run runs/unet-cbam-<timestamp> # one trained model (realistic clustering)
    python bench/inference.py --models unet reseg --sizes 64 --batches 1 2 --width 4 --steps 1 --images 2  # smoke run

Each model is exported once (`instseg export`'s code: its ExportCaps, dynamic batch and size,
parity-checked), then for every size and batch, side by side in one loop:

- PyTorch ms: eager forward per batch (eval, no grad), after one warm-up;
- ONNX Runtime ms: the same batch through the exported graph (CPU provider, ORT_ENABLE_ALL);
- speed-up: PyTorch ms / ONNX Runtime ms (above 1: ONNX Runtime is faster);
- infer images/s: the pipeline `instseg infer` runs, end to end - read PNG, batch, ONNX Runtime,
  clustering (the model's defaults), write the label and overlay PNGs - over `--images`
  synthetic plants of that size, `--batch` images per run.

Both runtimes get `--threads` threads (default: torch's default). Untrained models (the
default) cluster random embeddings, whose cost differs from a trained model's; `--run` times
a trained one. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from instseg import create_model, get_registry, list_models
from instseg.torchfree.clustering import ClusterParams
from instseg.core.data.synthetic import render_plant
from instseg.core.registry import plugin_requirements
from instseg.exporters.onnx import ExportRequest, export_onnx, request_from_checkpoint, sample_images
from instseg.torchfree.imageio import write_rgb
from instseg.torchfree.outputs import OutputOptions, write_prediction
from instseg.torchfree.pipeline import Prediction, predict
from instseg.runtime import INPUT_NAME, OUTPUT_NAMES, OnnxRunner


@dataclass
class Row:
    model: str
    size: int
    batch: int
    torch_ms: float
    ort_ms: float
    infer_ips: float

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.ort_ms


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="registered names (default: all)")
    parser.add_argument("--run", type=Path, default=None, help="a trained run (or checkpoint) instead of --models")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--width", type=int, default=None, help="override every model's width (untrained models)")
    parser.add_argument("--steps", type=int, default=3, help="timed forward passes per cell (after 1 warm-up)")
    parser.add_argument("--images", type=int, default=16, help="images per end-to-end infer measurement")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and ONNX Runtime")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def requests(args: argparse.Namespace) -> list[ExportRequest]:
    if args.run is not None:
        return [request_from_checkpoint(args.run)]
    chosen = []
    for name in args.models or list_models():
        spec = get_registry().model_spec(name)
        torch.manual_seed(args.seed)
        backbone = spec.backbone_for(None)
        chosen.append(ExportRequest(
            model=create_model(name, width=args.width).eval(), name=name, backbone=backbone, caps=spec.export,
            image_size=min(args.sizes), cluster=ClusterParams(), plugins=plugin_requirements(name, backbone),
            source="bench/inference.py (untrained)"))
    return chosen


def mean_ms(run, steps: int) -> float:
    """Milliseconds per call, after one warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start) * 1000 / steps


def write_images(folder: Path, size: int, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"plant{i:03d}.png")
        write_rgb(paths[-1], render_plant(seed, i, size, split="val")[0])
    return paths


def infer_images_per_second(runner: OnnxRunner, paths: list[Path], batch: int, out: Path) -> float:
    """`instseg infer`'s loop: every image read, run, clustered and written."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for result in predict(paths, runner, runner.cluster, batch):
        if not isinstance(result, Prediction):
            raise SystemExit(f"bench: {result.message}")
        write_prediction(result, out, OutputOptions())
    return len(paths) / (time.perf_counter() - start)


def bench_model(request: ExportRequest, args: argparse.Namespace, work: Path) -> list[Row]:
    path = work / f"{request.name}.onnx"
    result = export_onnx(request, path)
    if not result.ok:
        raise SystemExit(f"bench: {request.name} failed its parity check; see {result.path}")
    runner = OnnxRunner.open(path, "cpu", args.threads or torch.get_num_threads())
    rows = []
    for size in args.sizes:
        runner.image_size = size  # the working size the pipeline resizes to: the images' own size here
        paths = write_images(work / f"images-{size}", size, args.images, args.seed)
        for batch in args.batches:
            images = sample_images((batch, 3, size, size), args.seed)
            padded = np.pad(images, ((0, 0), (0, 0), (0, -size % runner.multiple_of), (0, -size % runner.multiple_of)),
                            mode="edge")
            tensor = torch.from_numpy(images)
            with torch.no_grad():
                torch_ms = mean_ms(lambda: request.model(tensor), args.steps)
            ort_ms = mean_ms(lambda: runner.session.run(list(OUTPUT_NAMES), {INPUT_NAME: padded}), args.steps)
            ips = infer_images_per_second(runner, paths, batch, work / f"out-{request.name}-{size}-{batch}")
            rows.append(Row(request.name, size, batch, torch_ms, ort_ms, ips))
            print(f"{request.name} {size}px batch {batch}: PyTorch {torch_ms:.1f} ms, ONNX Runtime {ort_ms:.1f} ms, "
                  f"infer {ips:.2f} images/s", flush=True)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| model | size | batch | PyTorch ms | ONNX Runtime ms | speed-up | infer images/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.size} | {r.batch} | {r.torch_ms:.1f} | {r.ort_ms:.1f} | {r.speedup:.2f}x | "
                     f"{r.infer_ips:.2f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for request in requests(args):
            rows += bench_model(request, args, Path(work))
    width = f"width {args.width}" if args.width else "default widths"
    print(f"\nCPU, threads: {torch.get_num_threads()} for PyTorch and for ONNX Runtime (CPUExecutionProvider, "
          f"ORT_ENABLE_ALL); {'trained run ' + str(args.run) if args.run else 'untrained models, ' + width}; "
          f"ms per batch over {args.steps} passes; infer over {args.images} images\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
