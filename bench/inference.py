"""ONNX inference speed: PyTorch eager against ONNX Runtime for every model, and a trained run's
fp32 / int8 / fp16 exports side by side, end to end as `instseg infer` runs them.

    python bench/inference.py --run cvppp-bench/val/unet-cbam     # precisions of a trained run (README table)
    python bench/inference.py --run RUN --sizes 64 --batches 1 --images 4 --steps 1   # a smoke run
    python bench/inference.py                                       # every model, untrained: PyTorch vs ONNX Runtime
    python bench/inference.py --models unet reseg --sizes 64 --batches 1 2 --width 4 --steps 1 --images 2

With `--run`, the run is exported in each `--precisions` (fp32; int8 through `instseg export
--int8`'s code, never refused here; fp16), then for every size and batch, in one loop:

- network ms: ONNX Runtime on a batch of the timing images (after one warm-up), per image;
- sequential images/s: read, network, clustering, writing one after the other (`pipeline.predict`);
- infer images/s: `instseg infer`'s own path (`outputs.predict_folder`: the stages overlapped,
  label and overlay PNGs written), and the stage that set the pace (the most busy time per
  image on each of its threads);
- vs reference: infer images/s against the reference pipeline's 800-1000 ms per image;
- SBD: the validation images (all of them: CVPPP A1's 28 plants for a CVPPP run, synthetic
  otherwise) predicted at that working size, scored at their own resolution, and the change
  against fp32.

The timing images are the first `--images` validation images resized to size x size, each
predicted at that working size. bf16 is probed, not benchmarked: the note under the table
says whether ONNX Runtime's CPU provider can run a bfloat16 Conv at all.
Without `--run`: untrained models (`--models`, default all), PyTorch eager ms against ONNX
Runtime ms and infer images/s on synthetic plants (their clustering cost is indicative only).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from instseg import create_model, get_registry, list_models
from instseg.data.synthetic import render_plant
from instseg.exporters.onnx import ExportRequest, export_onnx, request_from_checkpoint, sample_images
from instseg.exporters.quantize import export_int8
from instseg.instances.clustering import ClusterParams
from instseg.io.images import resize_image
from instseg.io.writing import write_rgb
from instseg.models.registry import plugin_requirements
from instseg.predict.evaluation import EvalData, evaluate_runner, run_datasets
from instseg.predict.outputs import OutputOptions, predict_folder, write_prediction
from instseg.predict.pipeline import Prediction, predict
from instseg.predict.stages import STAGES
from instseg.runtime import INPUT_NAME, OUTPUT_NAMES, OnnxRunner

REFERENCE_MS = (800, 1000)  # the reference implementation's time per image (its README)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a trained run (or checkpoint): compare precisions")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8", "fp16"], choices=["fp32", "int8", "fp16"])
    parser.add_argument("--models", nargs="*", default=None, help="untrained models (default: all registered)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--width", type=int, default=None, help="override every untrained model's width")
    parser.add_argument("--steps", type=int, default=3, help="timed network runs per cell (after 1 warm-up)")
    parser.add_argument("--images", type=int, default=16, help="images per end-to-end measurement")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="infer's --intra-op-threads, and torch's threads; 0: their default")
    parser.add_argument("--threads", type=int, default=None, help="infer's --threads (default: infer's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def mean_ms(run: Callable[[], object], steps: int) -> float:
    """Milliseconds per call, after one warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start) * 1000 / steps


def sequential_ips(runner: OnnxRunner, paths: list[Path], batch: int, out: Path) -> float:
    """Read, run, cluster and write one after the other (what `infer` did before it overlapped them)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for result in predict(paths, runner, runner.cluster, batch):
        if not isinstance(result, Prediction):
            raise SystemExit(f"bench: {result.message}")
        write_prediction(result, out, OutputOptions(overwrite=True))
    return len(paths) / (time.perf_counter() - start)


def infer_ips(runner: OnnxRunner, paths: list[Path], batch: int, out: Path, workers: int | None) -> tuple[float, str]:
    """`instseg infer`'s path: images/s, and the stage that set the pace with its busy time
    per image and thread."""
    start = time.perf_counter()
    result = predict_folder(paths, runner, out, runner.cluster, batch, OutputOptions(overwrite=True), threads=workers)
    seconds = time.perf_counter() - start
    if result.failures:
        raise SystemExit(f"bench: {result.failures[0]}")
    times = result.stage_times
    pace = times.busiest()
    per_thread = times.seconds[pace] / times.threads[pace] / len(paths) * 1000
    return len(paths) / seconds, f"{STAGES[pace]} {per_thread:.0f} ms"


# -- a trained run's precisions ------------------------------------------------------------


@dataclass
class PrecisionRow:
    precision: str
    size: int
    batch: int
    network_ms: float  # per image
    sequential_ips: float
    infer_ips: float
    pace: str  # the stage that set the pace, with its busy ms per image and thread
    sbd: float
    sbd_change: float

    def cells(self) -> list[str]:
        fast, slow = (self.infer_ips * ms / 1000 for ms in REFERENCE_MS)
        change = "" if self.precision == "fp32" else f"{self.sbd_change:+.4f}"
        return [self.precision, str(self.size), str(self.batch), f"{self.network_ms:.1f}",
                f"{self.sequential_ips:.2f}", f"{self.infer_ips:.2f}", f"{1000 / self.infer_ips:.0f}",
                f"{fast:.1f}-{slow:.1f}x", self.pace, f"{self.sbd:.4f}", change]


PRECISION_HEADER = ["precision", "size", "batch", "network ms/img", "sequential img/s", "infer img/s",
                    "infer ms/img", "vs reference", "pace set by (busy ms/img/thread)", "SBD", "SBD change"]


def export_precision(request: ExportRequest, precision: str, work: Path) -> Path:
    path = work / f"{precision}.onnx"
    if precision == "int8":  # judged on the task inside; the bench reports, so nothing is refused
        result = export_int8(request, path, None, tolerance=1.0)
        return result.path
    result = export_onnx(replace(request, fp16=precision == "fp16"), path)
    if precision == "fp32" and not result.ok:
        raise SystemExit(f"bench: the fp32 export failed its parity check; see {result.path}")
    return result.path


def timing_images(val_set, size: int, count: int, folder: Path) -> tuple[list[Path], np.ndarray]:
    """The first validation images resized to size x size, as PNGs and as one N x 3 x H x W array."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, arrays = [], []
    for i in range(min(count, len(val_set))):
        item = val_set.read(i)
        image = resize_image(item["image"].permute(1, 2, 0).numpy(), (size, size))
        paths.append(folder / f"{item.get('name', i)}.png")
        write_rgb(paths[-1], np.round(image * 255).astype(np.uint8))
        arrays.append(image.transpose(2, 0, 1))
    return paths, np.stack(arrays).astype(np.float32)


def bench_run(args: argparse.Namespace, work: Path) -> list[PrecisionRow]:
    request = request_from_checkpoint(args.run)
    config = request.run_config
    models = {precision: export_precision(request, precision, work) for precision in args.precisions}
    rows = []
    for size in args.sizes:
        _, val_set = run_datasets(config["data"], config, EvalData(), size, request.model.max_instances)
        paths, arrays = timing_images(val_set, size, args.images, work / f"images-{size}")
        sbd = {}
        for precision, path in models.items():
            runner = OnnxRunner.open(path, "cpu", args.intra_op_threads)
            runner.image_size = size
            sbd[precision] = evaluate_runner(runner, val_set, batch_size=8).summary()["sbd"]["mean"]
            for batch in args.batches:
                images = np.resize(arrays, (batch, *arrays.shape[1:]))  # the first images, repeated if too few
                network = mean_ms(lambda: runner.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}), args.steps)
                cell = work / f"out-{precision}-{size}-{batch}"
                sequential = sequential_ips(runner, paths, batch, cell / "sequential")
                ips, pace = infer_ips(runner, paths, batch, cell / "infer", args.threads)
                rows.append(PrecisionRow(precision, size, batch, network / batch, sequential, ips, pace,
                                         sbd[precision], sbd[precision] - sbd.get("fp32", sbd[precision])))
                print(" | ".join(rows[-1].cells()), flush=True)
    return rows


def bf16_note() -> str:
    """Whether this ONNX Runtime's CPU provider runs a bfloat16 Conv (the ops these models need)."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["w"], ["wb"], to=TensorProto.BFLOAT16),
             helper.make_node("Conv", ["xb", "wb"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises one of several pybind types: the message is the result
        return f"bf16: not benchmarked: ONNX Runtime {ort.__version__} on the CPU refuses a bfloat16 Conv " \
               f"({str(exc).strip().splitlines()[0][:120]})"
    return f"bf16: ONNX Runtime {ort.__version__} runs a bfloat16 Conv on this CPU: worth adding an export"


# -- untrained models: PyTorch against ONNX Runtime ----------------------------------------


@dataclass
class ModelRow:
    model: str
    size: int
    batch: int
    torch_ms: float
    ort_ms: float
    infer_ips: float

    def cells(self) -> list[str]:
        return [self.model, str(self.size), str(self.batch), f"{self.torch_ms:.1f}", f"{self.ort_ms:.1f}",
                f"{self.torch_ms / self.ort_ms:.2f}x", f"{self.infer_ips:.2f}"]


MODEL_HEADER = ["model", "size", "batch", "PyTorch ms", "ONNX Runtime ms", "speed-up", "infer images/s"]


def untrained_requests(args: argparse.Namespace) -> list[ExportRequest]:
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


def synthetic_images(folder: Path, size: int, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"plant{i:03d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        write_rgb(path, render_plant(seed, i, size, split="val")[0])
    return paths


def bench_model(request: ExportRequest, args: argparse.Namespace, work: Path) -> list[ModelRow]:
    result = export_onnx(request, work / f"{request.name}.onnx")
    if not result.ok:
        raise SystemExit(f"bench: {request.name} failed its parity check; see {result.path}")
    runner = OnnxRunner.open(result.path, "cpu", args.intra_op_threads)
    rows = []
    for size in args.sizes:
        runner.image_size = size  # the working size the pipeline resizes to: the images' own size here
        paths = synthetic_images(work / f"images-{size}", size, args.images, args.seed)
        for batch in args.batches:
            images = sample_images((batch, 3, size, size), args.seed)
            pad = -size % runner.multiple_of
            padded = np.pad(images, ((0, 0), (0, 0), (0, pad), (0, pad)), mode="edge")
            tensor = torch.from_numpy(images)
            with torch.no_grad():
                torch_ms = mean_ms(lambda: request.model(tensor), args.steps)
            ort_ms = mean_ms(lambda: runner.session.run(list(OUTPUT_NAMES), {INPUT_NAME: padded}), args.steps)
            ips, _ = infer_ips(runner, paths, batch, work / f"out-{request.name}-{size}-{batch}", args.threads)
            rows.append(ModelRow(request.name, size, batch, torch_ms, ort_ms, ips))
            print(" | ".join(rows[-1].cells()), flush=True)
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(cells) + " |" for cells in rows])


def main() -> None:
    args = parse_args()
    if args.intra_op_threads:
        torch.set_num_threads(args.intra_op_threads)
    with tempfile.TemporaryDirectory(prefix="instseg-bench-") as work:
        if args.run is not None:
            table = markdown(PRECISION_HEADER, [row.cells() for row in bench_run(args, Path(work))])
            what = f"trained run {args.run}; timings over {args.images} validation images per cell"
        else:
            rows = [row for request in untrained_requests(args) for row in bench_model(request, args, Path(work))]
            table = markdown(MODEL_HEADER, [row.cells() for row in rows])
            what = f"untrained models, {f'width {args.width}' if args.width else 'default widths'}"
    threads = args.intra_op_threads or "ONNX Runtime's default"
    print(f"\nCPU ({torch.get_num_threads()} torch threads), ONNX Runtime {ort.__version__} CPUExecutionProvider with "
          f"{threads} threads; {what}; network ms over {args.steps} runs\n")
    print(table)
    if args.run is not None:
        print(f"\n{bf16_note()}")


if __name__ == "__main__":
    main()
