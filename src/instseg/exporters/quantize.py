"""int8 ONNX models: static quantisation by ONNX Runtime, judged on the task they do.

    instseg export RUN --onnx --int8  ->  export_int8()

The model is exported in fp32 first (checked against PyTorch as every export is), then
`onnxruntime.quantization.quantize_static` rewrites it in QDQ form: int8 weights per output
channel, uint8 activations whose ranges (MinMax) are recorded on calibration images - the
run's own training images, or a folder given - fed exactly as the prediction pipeline feeds
the network; the output heads stay in float (`output_heads`). An int8 graph's raw outputs differ from fp32 far beyond any float tolerance, so
it is judged on its instance maps: both graphs predict the run's validation images through
the prediction pipeline; the SBD between their label maps and the change in validation SBD
are reported, and a drop beyond the tolerance (`instseg export`: 0.01) refuses the file, as a failed
fp32 parity does, unless forced.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import instseg.runtime.builds  # noqa: F401 - before onnxruntime: one line, not a traceback, where it is missing
from instseg.errors import ConfigError, DataError, OutputError
from instseg.exporters.onnx import ExportRequest, ExportResult, export_onnx, failed_path, with_metadata
from instseg.io.atomic import atomic_write_bytes, cannot_write
from instseg.io.images import read_image
from instseg.io.microscopy import Reading
from instseg.io.inputs import gather_inputs
from instseg.metrics.scores import symmetric_best_dice
from instseg.predict.pipeline import Failure, Source, batches, network_batch, predict_sources
from instseg.runtime.metadata import INPUT_NAME
from instseg.runtime.runner import OnnxRunner

CALIBRATION_IMAGES = 32  # at most, evenly spaced over the calibration set
QUANTIZATION = "static QDQ: int8 weights per channel, uint8 activations, MinMax ranges; output heads in fp32"
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class TaskParity:
    """The fp32 and int8 graphs on the validation images, through the prediction pipeline."""

    images: int
    fp32_sbd: float  # mean validation SBD of the fp32 graph
    int8_sbd: float
    agreement: float  # mean SBD between the two graphs' label maps (1: the same instances)
    lowest_agreement: float  # on the image where they differ most
    tolerance: float  # the largest validation SBD drop accepted

    @property
    def change(self) -> float:
        return self.int8_sbd - self.fp32_sbd

    @property
    def ok(self) -> bool:
        return -self.change <= self.tolerance


@dataclass(frozen=True)
class Int8Result:
    fp32: ExportResult  # the fp32 graph the int8 one is made from: its parity against PyTorch (a temporary file)
    path: Path | None  # the int8 file: the target, or failed_path(target) when refused; None when fp32 failed
    parity: TaskParity | None
    calibration: str  # which images calibrated it
    forced: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.parity is not None and (self.parity.ok or self.forced)


def evenly_spaced(count: int, limit: int = CALIBRATION_IMAGES) -> list[int]:
    """Up to `limit` indices spread over 0..count-1 (the whole set, not its first images)."""
    return sorted({round(i) for i in np.linspace(0, count - 1, min(count, limit))}) if count else []


def folder_images(folder: Path, reading: Reading) -> list[np.ndarray]:
    """Calibration images from a folder (its images, not recursive), H x W x 3 in [0, 1], read as the model reads."""
    if not folder.is_dir():
        raise ConfigError(f"--calibration {folder}: not a folder of images")
    paths = gather_inputs([folder])
    return [read_image(paths[i], reading) for i in evenly_spaced(len(paths))]


def dataset_images(dataset: Sequence[Any]) -> list[np.ndarray]:
    """Calibration images from a dataset (items' `image`, 3 x H x W tensors in [0, 1])."""
    return [dataset.read(i)["image"].permute(1, 2, 0).numpy() for i in evenly_spaced(len(dataset))]


class _Feed(CalibrationDataReader):
    """Calibration images one at a time, as the pipeline feeds the network (resized, padded)."""

    def __init__(self, images: Sequence[np.ndarray], runner: OnnxRunner) -> None:
        sources = (Source(Path(f"calibration-{i}"), f"calibration-{i}", image, i) for i, image in enumerate(images))
        self._inputs = (network_batch(batch, runner) for batch in batches(sources, runner, 1))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._inputs, None)
        return None if batch is None else {INPUT_NAME: batch}


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser warns on the root logger about 1-D weights it keeps per tensor: noise here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def output_heads(model: onnx.ModelProto) -> list[str]:
    """The nodes from each graph output back to the layer with weights that makes it (the heads):
    kept in float. Clustering measures distances between embeddings, and the heads' rounding
    reaches them undamped: on CVPPP A1, quantising the heads too cost 0.008 validation SBD
    instead of 0.002, for 2 ms less per 256 px image."""
    producers = {output: node for node in model.graph.node for output in node.output}
    heads = []
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None:
            heads.append(node.name)
            if node.op_type in WEIGHTED_OPS or not node.input:
                break
            node = producers.get(node.input[0])
    return heads


def quantize_int8(fp32_path: Path, images: Sequence[np.ndarray], work: Path) -> onnx.ModelProto:
    """The int8 (QDQ) graph of an fp32 instseg ONNX file, calibrated on `images`; metadata
    copied with precision int8."""
    runner = OnnxRunner.open(fp32_path, "cpu")
    prepared, quantized = work / "prepared.onnx", work / "int8.onnx"
    with _quiet_quantizer():
        # constant folding and Conv+BatchNorm fusion first, as ONNX Runtime advises; its symbolic
        # shape inference cannot follow the dynamic H, W, so that step is skipped
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _Feed(images, runner), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=output_heads(onnx.load(str(prepared))))
    return with_metadata(onnx.load(str(quantized)), replace(runner.info, precision="int8"))


def task_parity(fp32: OnnxRunner, int8: OnnxRunner, val_set: Sequence[dict[str, Any]],
                tolerance: float) -> TaskParity:
    """Validation SBD of both graphs and the SBD between their label maps, image by image (one
    image held at a time, however many the validation set has)."""
    from instseg.predict.evaluation import labelled_sources

    rows = []  # (SBD fp32, SBD int8, SBD between them) per image
    for source, truth in labelled_sources(val_set):
        reference, quantized = (_label_map(source, runner) for runner in (fp32, int8))
        rows.append((symmetric_best_dice(reference, truth), symmetric_best_dice(quantized, truth),
                     symmetric_best_dice(quantized, reference)))
    fp32_sbd, int8_sbd, agreement = np.array(rows).T
    return TaskParity(len(rows), float(fp32_sbd.mean()), float(int8_sbd.mean()), float(agreement.mean()),
                      float(agreement.min()), tolerance)


def _label_map(source: Source, runner: OnnxRunner) -> np.ndarray:
    [result] = predict_sources([source], runner)
    if isinstance(result, Failure):
        raise DataError(result.message)
    return result.labels


@contextmanager
def _workspace() -> Iterator[Path]:
    """A temporary folder for the intermediate graphs (fp32, pre-processed, quantised, with any
    side files the quantiser writes), removed after; a full or read-only temporary folder is one
    OutputError naming the file, not a traceback."""
    try:
        with tempfile.TemporaryDirectory(prefix="instseg-int8-") as work:
            yield Path(work)
    except OutputError:
        raise
    except OSError as exc:
        raise cannot_write(exc.filename or tempfile.gettempdir(), exc) from exc


def quantization_record(calibration: str, parity: TaskParity, forced: bool) -> str:
    """The `instseg.quantization` metadata value: how the file was made and how it scored."""
    return json.dumps({"method": QUANTIZATION, "calibration": calibration,
                       "validation": {"images": parity.images, "sbd_fp32": round(parity.fp32_sbd, 4),
                                      "sbd_int8": round(parity.int8_sbd, 4), "agreement": round(parity.agreement, 4),
                                      "tolerance": parity.tolerance, "forced": forced}})


def export_int8(request: ExportRequest, path: str | os.PathLike, calibration: Path | None, tolerance: float,
                force: bool = False) -> Int8Result:
    """Export fp32 (parity against PyTorch), quantise, judge on the run's validation images.

    The file lands at `path` when validation SBD drops by at most `tolerance` (or `force`),
    else at `failed_path(path)`, so a good model at `path` is never replaced by a worse one.
    When the fp32 graph itself fails its parity, nothing is written."""
    from instseg.predict.evaluation import EvalData, run_datasets

    config = request.run_config
    if "data" not in config:
        raise ConfigError(f"{request.source}: records no training data, so there are no validation images to "
                          "judge an int8 model on; export it from its run directory")
    start = time.perf_counter()
    path = Path(path)
    train_set, val_set = run_datasets(config["data"], config, EvalData(), request.image_size,
                                      train_size=CALIBRATION_IMAGES, reading=request.reading)
    images = folder_images(calibration, request.reading) if calibration is not None else dataset_images(train_set)
    described = (f"{len(images)} images of {calibration}" if calibration is not None
                 else f"{len(images)} training images of {config['data']}")
    with _workspace() as work:
        fp32 = export_onnx(request, work / "fp32.onnx")
        if not fp32.ok:
            return Int8Result(fp32, None, None, described, force, time.perf_counter() - start)
        proto = quantize_int8(fp32.path, images, work)
        unverified = work / "int8.unverified.onnx"
        onnx.save(proto, str(unverified))
        parity = task_parity(OnnxRunner.open(fp32.path, "cpu"), OnnxRunner.open(unverified, "cpu"), val_set,
                             tolerance)
    proto.metadata_props.add(key="instseg.quantization", value=quantization_record(described, parity, force))
    target = path if parity.ok or force else failed_path(path)
    atomic_write_bytes(target, proto.SerializeToString())
    return Int8Result(fp32, target, parity, described, force, time.perf_counter() - start)
