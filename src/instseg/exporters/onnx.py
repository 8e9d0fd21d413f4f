"""ONNX export: a model's whole forward pass in one file that ONNX Runtime runs as PyTorch does.

    instseg export RUN --onnx  ->  request_from_checkpoint()  ->  export_onnx()

The graph is the SegmentationModel itself: float32 RGB NCHW in [0, 1] in (normalised inside,
so preprocessing cannot drift), `semantic`, `embedding`, `count` out. How it is exported
follows the model's `ExportCaps`: the dynamo exporter (`torch.onnx.export(dynamo=True)`)
unless the spec names the legacy one; batch, H and W dynamic where the spec allows, H and W
as multiples of the model's `multiple_of` (the runtime pads to it, as the model does
inside); otherwise one static size that the runtime resizes images to.

Every export is checked before it is kept: `metadata_props` (`runtime.metadata.ModelInfo`),
`onnx.checker.check_model(full_check=True)`, then ONNX Runtime on the CPU against PyTorch on
synthetic plants at the export shape and, for a dynamic graph, at a second shape (another
batch, H and W). A graph that misses the tolerance is kept only as `<name>.parity-failed.onnx`.

The known traps, verified with torch 2.13 / onnxscript 0.7.2:
- dynamo writes opset 18 when asked for 17 and says nothing, so 18 is the minimum;
- dynamo writes weights to a side file unless `external_data=False`: one file ships easier;
- declaring H, W as `k * Dim(...)` makes the model's internal padding vanish from the graph
  (it is statically zero), so no shape guard pins the size;
- GRUs (ReNet) export with dynamo only through a while-loop decomposition that takes ~30 s
  and fails on the second export in a process (a stale dispatch cache on aten.gru); the
  legacy exporter writes the same ONNX GRU ops in under a second, hence `exporter="legacy"`
  in the ReNet models' specs. SegNet's MaxUnpool2d exports with dynamo only.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from instseg.data.synthetic import render_plant
from instseg.errors import ExportError
from instseg.instances.clustering import ClusterParams
from instseg.exporters.options import DEFAULT_OPSET, check_opset, check_static_size
from instseg.exporters.output import publish, staged
from instseg.io.microscopy import FIXED, Reading
from instseg.models.specs import ExportCaps
from instseg.runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelInfo
from instseg.runtime.runner import RUN_ERRORS
from instseg.runtime.session import open_session

ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")  # exporter messages come colored
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")
@dataclass(frozen=True)
class Tolerance:
    """|onnx - torch| <= atol + rtol * |torch| for every element (numpy.allclose)."""

    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"{_short(self.rtol)} / {_short(self.atol)}"


def _short(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-") if value < 0.1 else f"{value:g}"


# fp32: every output of every built-in model is within ~1e-7 of PyTorch (the same float32
# kernels up to summation order), so the starting tolerance holds for all three.
TOLERANCES = {"semantic": Tolerance(1e-3, 1e-5), "embedding": Tolerance(1e-3, 1e-5), "count": Tolerance(1e-3, 1e-5)}
# fp16 has a 2^-11 relative step, compounded over ~20 layers: reported against fp32 PyTorch
# with an indicative tolerance, never a reason to refuse the export.
FP16_TOLERANCE = Tolerance(1e-2, 1e-2)


@dataclass(frozen=True)
class ExportRequest:
    """A model and everything the exported file records about it."""

    model: nn.Module  # a SegmentationModel, in eval mode
    name: str  # its registered name
    backbone: str | None
    caps: ExportCaps
    image_size: int  # the working size (an image's shorter side)
    cluster: ClusterParams
    plugins: dict[str, str]
    source: str  # where the weights came from
    opset: int = DEFAULT_OPSET
    static_size: tuple[int, int] | None = None  # force a static graph of this H x W
    fp16: bool = False
    scale: float | None = None  # the run's fixed resize factor (None: shorter side -> image_size)
    object_size: float | None = None  # the run's training objects' size at the working scale
    reading: Reading = FIXED  # the run's channels and intensity scaling (io.microscopy)
    run_config: Mapping[str, Any] = field(default_factory=dict)  # the run's training options (data, split)


@dataclass(frozen=True)
class ExportPlan:
    """How one export runs: exporter, dynamic axes and the shapes parity is checked at
    (the first is the example the exporter traces)."""

    exporter: str
    dynamic_batch: bool
    static_size: tuple[int, int] | None
    multiple_of: int
    shapes: tuple[tuple[int, int, int, int], ...]

    def describe(self) -> str:
        hw = (f"dynamic H, W (multiples of {self.multiple_of})" if self.static_size is None
              else f"static {self.static_size[0]}x{self.static_size[1]}")
        return f"{self.exporter} exporter, {hw}, {'dynamic batch' if self.dynamic_batch else 'batch 1'}"


@dataclass(frozen=True)
class ParityRow:
    shape: tuple[int, ...]
    output: str
    max_abs: float  # max |onnx - torch|
    max_rel: float  # max |onnx - torch| / max |torch|: the error relative to the output's scale
    tolerance: Tolerance
    ok: bool
    error: str | None = None  # ONNX Runtime could not run the graph at this shape


@dataclass(frozen=True)
class ExportResult:
    path: Path  # where the file is: the requested path, or the .parity-failed.onnx beside it
    info: ModelInfo
    plan: ExportPlan
    parity: tuple[ParityRow, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.parity)


def plan_export(caps: ExportCaps, multiple_of: int, image_size: int,
                static_size: tuple[int, int] | None = None) -> ExportPlan:
    """Dynamic graphs are traced at batch 2 and the working size rounded up to `multiple_of`
    and checked again at batch 1 and one and two multiples larger; static ones at their size
    (and batch 1 too when the batch is dynamic)."""
    if static_size is not None:
        check_static_size(static_size, multiple_of)
    batch = 2 if caps.dynamic_batch else 1
    if static_size is not None or not caps.dynamic_hw:
        size = static_size or (image_size, image_size)
        shapes = [(batch, 3, *size)] + ([(1, 3, *size)] if caps.dynamic_batch else [])
        return ExportPlan(caps.exporter, caps.dynamic_batch, tuple(size), multiple_of, tuple(shapes))
    side = math.ceil(image_size / multiple_of) * multiple_of
    shapes = ((batch, 3, side, side), (1, 3, side + multiple_of, side + 2 * multiple_of))
    return ExportPlan(caps.exporter, caps.dynamic_batch, None, multiple_of, shapes)


class _Graph(nn.Module):
    """What is exported: the model as a function of `image` returning a plain tuple; with
    fp16, a half-precision copy between float32 casts (inputs and outputs stay float32)."""

    def __init__(self, model: nn.Module, fp16: bool) -> None:
        super().__init__()
        self.fp16 = fp16
        self.model = copy.deepcopy(model).half() if fp16 else model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.fp16:
            return tuple(t.float() for t in self.model(image.half()))
        return tuple(self.model(image))


def sample_images(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """N x 3 x H x W float32 synthetic plants in [0, 1]: parity inputs that look like data."""
    n, _, h, w = shape
    return np.stack([render_plant(seed, i, (h, w), split="val")[0] for i in range(n)]).transpose(0, 3, 1, 2) \
        .astype(np.float32) / 255.0


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Exporter chatter (torchvision not installed, deprecation, attribute warnings) is not
    the user's business: the checker and the parity run judge the result."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_dynamo(graph: nn.Module, example: torch.Tensor, plan: ExportPlan, opset: int) -> onnx.ModelProto:
    from torch.export import Dim

    axes: dict[int, object] = {}
    if plan.dynamic_batch:
        axes[0] = Dim("batch")
    if plan.static_size is None:
        k = plan.multiple_of
        axes[2] = k * Dim("h") if k > 1 else Dim("height")
        axes[3] = k * Dim("w") if k > 1 else Dim("width")
    program = torch.onnx.export(graph, (example,), dynamo=True, dynamic_shapes={"image": axes} if axes else None,
                                opset_version=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                external_data=False, verbose=False)
    return program.model_proto


def _export_legacy(graph: nn.Module, example: torch.Tensor, plan: ExportPlan, opset: int) -> onnx.ModelProto:
    batch = {0: "batch"} if plan.dynamic_batch else {}
    hw = {2: "height", 3: "width"} if plan.static_size is None else {}
    axes = {INPUT_NAME: {**batch, **hw}, "semantic": {**batch, **hw}, "embedding": {**batch, **hw}, "count": batch}
    buffer = io.BytesIO()
    torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                      output_names=list(OUTPUT_NAMES), dynamic_axes={k: v for k, v in axes.items() if v} or None)
    return onnx.load_from_string(buffer.getvalue())


EXPORTERS = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def export_graph(model: nn.Module, plan: ExportPlan, opset: int = DEFAULT_OPSET, fp16: bool = False,
                 name: str = "model") -> onnx.ModelProto:
    """Trace `model` with the plan's exporter; failures become one ExportError line."""
    check_opset(opset, plan.exporter)
    example = torch.from_numpy(sample_images(plan.shapes[0]))
    graph = _Graph(model, fp16).eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            proto = EXPORTERS[plan.exporter](graph, example, plan, opset)
    except Exception as exc:  # the exporters raise many types: report which model and exporter failed, in one line
        text = ANSI_CODES.sub("", str(exc))
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise ExportError(f"{name}: the {plan.exporter} ONNX exporter failed ({type(exc).__name__}: {first}); "
                          "if only the other exporter or a static size works, say so in the model's ExportCaps") from exc
    _check_axes(proto, plan, name)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"{name}: asked the {plan.exporter} exporter for opset {opset}, it wrote {written}")
    return proto


def _check_axes(proto: onnx.ModelProto, plan: ExportPlan, name: str) -> None:
    """The exported input is dynamic exactly where the plan says: exporters may pin an axis
    they were asked to keep free (the parity run at a second shape would fail less clearly)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    wanted = {0: plan.dynamic_batch, 2: plan.static_size is None, 3: plan.static_size is None}
    for axis, dynamic in wanted.items():
        if dynamic and not dims[axis].dim_param:
            what = "batch" if axis == 0 else "H and W"
            raise ExportError(f"{name}: the {plan.exporter} exporter fixed the input's axis {axis} to "
                              f"{dims[axis].dim_value}; this model cannot export a dynamic {what}: declare it in its "
                              f"ExportCaps ({'dynamic_batch' if axis == 0 else 'dynamic_hw'}=False) or use --static")


def model_info(request: ExportRequest, plan: ExportPlan) -> ModelInfo:
    from instseg.version import __version__

    model = request.model
    return ModelInfo(
        model=request.name, backbone=request.backbone, instseg_version=__version__, plugins=dict(request.plugins),
        exporter=plan.exporter, torch_version=torch.__version__, opset=request.opset,
        precision="fp16" if request.fp16 else "fp32",
        exported=datetime.now(timezone.utc).isoformat(timespec="seconds"), source=request.source,
        embedding_dim=model.embedding_dim, max_instances=model.max_instances, image_size=request.image_size,
        multiple_of=model.multiple_of, static_size=plan.static_size, dynamic_batch=plan.dynamic_batch,
        mean=tuple(model.normalize.mean.flatten().tolist()), std=tuple(model.normalize.std.flatten().tolist()),
        cluster=request.cluster, scale=request.scale, object_size=request.object_size,
        normalize=request.reading.normalize, channels=request.reading.channels,
        objective=str(request.run_config.get("objective", "discriminative")))


def with_metadata(proto: onnx.ModelProto, info: ModelInfo) -> onnx.ModelProto:
    """Add the instseg keys to `metadata_props` (replacing older instseg keys, keeping others)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("instseg.")]
    del proto.metadata_props[:]
    for key, value in [*keep, *info.to_props().items()]:
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"instseg {info.model}: image (N x 3 x H x W RGB in [0, 1]) -> {', '.join(OUTPUT_NAMES)}"
    return proto


def check_parity(model: nn.Module, path: str | os.PathLike, plan: ExportPlan,
                 tolerances: dict[str, Tolerance]) -> tuple[ParityRow, ...]:
    """ONNX Runtime (CPU) against PyTorch, every output at every planned shape."""
    session, _ = open_session(path, "cpu")
    rows = []
    for shape in plan.shapes:
        images = sample_images(shape, seed=1)
        with torch.no_grad():
            expected = [t.float().numpy() for t in model(torch.from_numpy(images))]
        try:
            got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        except RUN_ERRORS as exc:  # the graph does not run at this shape: a parity failure, not a crash
            reason = str(exc).strip().splitlines()[0]
            rows += [ParityRow(shape, output, math.inf, math.inf, tolerances[output], False, reason)
                     for output in OUTPUT_NAMES]
            continue
        for output, reference, value in zip(OUTPUT_NAMES, expected, got):
            rows.append(_compare(shape, output, reference, value, tolerances[output]))
    return tuple(rows)


def _compare(shape: tuple[int, ...], output: str, reference: np.ndarray, value: np.ndarray,
             tolerance: Tolerance) -> ParityRow:
    if reference.shape != value.shape:
        return ParityRow(shape, output, math.inf, math.inf, tolerance, False)
    diff = np.abs(value.astype(np.float64) - reference)
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(reference).max(initial=0.0))
    ok = bool(np.allclose(value, reference, rtol=tolerance.rtol, atol=tolerance.atol))
    return ParityRow(shape, output, max_abs, max_abs / scale if scale > 0 else max_abs, tolerance, ok)


def failed_path(path: Path) -> Path:
    return path.with_name(f"{path.name.removesuffix('.onnx')}.parity-failed.onnx")


def export_onnx(request: ExportRequest, path: str | os.PathLike) -> ExportResult:
    """Export, add metadata, check, write and compare with PyTorch.

    The file lands at `path` when every output is within tolerance (fp16 exports always do:
    their parity is reported, not required); otherwise at `failed_path(path)`, so a good
    model already at `path` is never replaced by a bad one. ExportResult.ok tells which.
    """
    start = time.perf_counter()
    path = Path(path)
    model = request.model.eval()
    plan = plan_export(request.caps, model.multiple_of, request.image_size, request.static_size)
    info = model_info(request, plan)
    proto = with_metadata(export_graph(model, plan, request.opset, request.fp16, request.name), info)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{request.name}: onnx.checker refused the exported graph: {str(exc).splitlines()[0]}") from exc
    with staged(path, proto.SerializeToString()) as unverified:
        tolerances = {name: FP16_TOLERANCE for name in OUTPUT_NAMES} if request.fp16 else TOLERANCES
        parity = check_parity(model, unverified, plan, tolerances)
        ok = all(row.ok for row in parity)
        target = path if ok or request.fp16 else failed_path(path)
        publish(unverified, target)
    return ExportResult(target, info, plan, parity, time.perf_counter() - start)


def default_output(checkpoint: Path, static_size: tuple[int, int] | None, precision: str = "fp32") -> Path:
    """`model.onnx` beside the checkpoint; `model-HxW.onnx` when static, `-fp16` / `-int8` for those precisions."""
    stem = "model" + (f"-{static_size[0]}x{static_size[1]}" if static_size else "") + \
        ("" if precision == "fp32" else f"-{precision}")
    return checkpoint.parent / f"{stem}.onnx"


def request_from_checkpoint(path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                            static_size: tuple[int, int] | None = None, fp16: bool = False) -> ExportRequest:
    """An ExportRequest for a run directory or checkpoint: its model, spec, working size and
    clustering defaults, and the plugin distributions the model is built from here."""
    from instseg.models.factory import load_trained
    from instseg.models.registry import get_registry, plugin_requirements

    trained = load_trained(path)
    spec = get_registry().model_spec(trained.name)
    backbone = spec.backbone_for(trained.checkpoint.model.backbone)
    return ExportRequest(
        model=trained.model, name=spec.name, backbone=backbone, caps=spec.export, image_size=trained.image_size,
        cluster=trained.cluster, plugins=plugin_requirements(spec.name, backbone), source=trained.checkpoint.source,
        opset=opset, static_size=static_size, fp16=fp16, scale=trained.scale,
        object_size=trained.checkpoint.model.object_size, run_config=trained.checkpoint.config,
        reading=Reading.of(trained.checkpoint.model))
