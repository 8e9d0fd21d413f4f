"""Exporting a run: what `instseg export` and `instseg.export()` both do.

    plan_run_export(RUN, out, ...)  ->  RunExport (source, target, request), target checked
    run_export(plan)                ->  ExportResult (fp32 / fp16) or Int8Result
    check_result(result, target)    ->  ExportError when the file is not the one asked for

The CLI prints the parity tables between the last two steps; the library raises straight away.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from instseg.checkpoint import resolve_checkpoint
from instseg.errors import ConfigError, ExportError
from instseg.exporters import DEFAULT_SBD_TOLERANCE
from instseg.exporters.onnx import ExportRequest, ExportResult, default_output, export_onnx, request_from_checkpoint
from instseg.exporters.options import DEFAULT_OPSET, check_opset, check_sbd_tolerance, check_static_size
from instseg.exporters.output import check_writable, export_source
from instseg.exporters.quantize import Int8Result, export_int8


@dataclass(frozen=True)
class RunExport:
    """One export, decided and checked before anything is written."""

    source: Path  # the checkpoint
    target: Path  # the ONNX file asked for
    request: ExportRequest
    int8: bool = False
    calibration: Path | None = None
    sbd_tolerance: float = DEFAULT_SBD_TOLERANCE
    force: bool = False


def plan_run_export(path: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int | None = None,
                    static_size: tuple[int, int] | None = None, fp16: bool = False, int8: bool = False,
                    calibration: str | os.PathLike | None = None, sbd_tolerance: float = DEFAULT_SBD_TOLERANCE,
                    force: bool = False, overwrite: bool = False) -> RunExport:
    """The export of a run directory or checkpoint to `out` (default `model.onnx` beside it).

    Every option, the target and the model are checked here, before the export's seconds to
    minutes of work: the options first, then the target, then what the checkpoint's model allows
    (its exporter's opsets, its padding multiple)."""
    if int8 and fp16:
        raise ConfigError("--int8 and --fp16 exclude each other: choose one precision")
    if not int8 and (calibration is not None or force):
        raise ConfigError("--calibration and --force apply to --int8 exports only")
    opset = DEFAULT_OPSET if opset is None else opset
    check_opset(opset)
    check_sbd_tolerance(sbd_tolerance)
    source = resolve_checkpoint(path)
    target = Path(out) if out is not None else \
        default_output(source, static_size, "int8" if int8 else "fp16" if fp16 else "fp32")
    check_target(target, source, overwrite)
    request = request_from_checkpoint(source, opset, static_size, fp16)
    check_opset(opset, request.caps.exporter)
    if static_size is not None:
        check_static_size(static_size, request.model.multiple_of, request.name)
    return RunExport(source, target, request, int8, None if calibration is None else Path(calibration),
                     sbd_tolerance, force)


def check_target(target: Path, source: Path, overwrite: bool) -> None:
    """Never replace the checkpoint being exported or a folder, nor, unasked, any file (another
    run's export included); and the target's folder must take a new file."""
    if target.is_dir():
        raise ConfigError(f"--out {target}: is a folder; give a file name such as {target / 'model.onnx'}")
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"--out {target}: is the checkpoint being exported; choose another file name")
    if (target.exists() or target.is_symlink()) and not overwrite:
        exported = export_source(target)
        what = "is not an ONNX model written by instseg" if exported is None else \
            f"is an instseg export of {exported}"
        raise ConfigError(f"--out {target}: exists and {what}; not replaced (pass --overwrite to replace it, "
                          "or choose another --out)")
    check_writable(target)


def run_export(plan: RunExport) -> ExportResult | Int8Result:
    """Write the file (beside the target, marked as failed, when its parity check fails)."""
    if plan.int8:
        return export_int8(plan.request, plan.target, plan.calibration, plan.sbd_tolerance, plan.force)
    return export_onnx(plan.request, plan.target)


def check_result(result: ExportResult | Int8Result, target: Path) -> None:
    """An ExportError when the parity check failed (fp16 exports only report theirs)."""
    if isinstance(result, ExportResult):
        if not result.ok and result.info.precision == "fp32":
            raise ExportError(f"parity failed: the ONNX model does not match PyTorch; it was written to "
                              f"{result.path} for inspection, {target} was left alone")
        return
    if not result.fp32.ok:
        raise ExportError("parity failed: the fp32 graph the int8 model is quantised from does not match PyTorch; "
                          f"nothing was written, {target} was left alone")
    if not result.ok:
        raise ExportError(f"task parity failed: validation SBD drops by {-result.parity.change:.4f}, more than "
                          f"--sbd-tolerance {result.parity.tolerance:g}; the int8 model was written to "
                          f"{result.path} for inspection, {target} was left alone (--force keeps it anyway)")


def export_run(path: str | os.PathLike, out: str | os.PathLike | None = None,
               **options: object) -> ExportResult | Int8Result:
    """Plan, write and check in one call (`instseg.export`): the result, or an ExportError."""
    plan = plan_run_export(path, out, **options)  # type: ignore[arg-type]
    result = run_export(plan)
    check_result(result, plan.target)
    return result
