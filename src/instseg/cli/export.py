"""`instseg export`: a run's model as one ONNX file, checked and parity-tested against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, out, shown
from instseg.errors import ConfigError
from instseg.exporters import DEFAULT_SBD_TOLERANCE

if TYPE_CHECKING:
    from instseg.exporters.onnx import ExportResult
    from instseg.exporters.quantize import Int8Result


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory (uses best.pt) or a checkpoint file.")],
    onnx: Annotated[bool, typer.Option(  # noqa: ARG001 - accepted, as scripts name the format
        "--onnx", show_default=False, help="Export to ONNX: the one format so far, so also the default.")] = True,
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The ONNX file to write (default: model.onnx beside the checkpoint).")] = None,
    opset: Annotated[Optional[int], typer.Option(
        help="ONNX opset: 18 up to the newest the installed torch.onnx writes (default 18).")] = None,
    static: Annotated[Optional[str], typer.Option(
        help="Export at one fixed size HxW (e.g. 256x256); infer then resizes every image to it. "
             "Default: dynamic batch, H and W where the model allows it.")] = None,
    fp16: Annotated[bool, typer.Option(
        "--fp16", help="Half-precision weights and compute; inputs and outputs stay float32.")] = False,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Statically quantised int8 (ONNX Runtime, QDQ), judged by its validation SBD against fp32.")
    ] = False,
    calibration: Annotated[Optional[Path], typer.Option(
        help="--int8: a folder of images to calibrate on (default: the run's training images).")] = None,
    sbd_tolerance: Annotated[float, typer.Option(
        help="--int8: the largest drop in validation SBD against the fp32 model that is accepted.")
    ] = DEFAULT_SBD_TOLERANCE,
    force: Annotated[bool, typer.Option(
        help="--int8: keep the model even when its validation SBD drops by more than --sbd-tolerance.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing --out file, another export included (never the checkpoint itself).")
    ] = False,
) -> None:
    """Write the model as ONNX (normalisation inside, metadata for `instseg infer`), run onnx.checker,
    and compare ONNX Runtime with PyTorch on every output; exit 1 when they differ. With --int8,
    also compare the int8 model's validation SBD with the fp32 model's; exit 1 when it drops too far."""
    from instseg.exporters.run import check_result, plan_run_export, run_export
    from instseg.runtime.metadata import parse_size

    try:
        static_size = parse_size(static) if static is not None else None
    except ValueError as exc:
        raise ConfigError(f"--static: {exc}") from None
    plan = plan_run_export(checkpoint, out_file, opset=opset, static_size=static_size, fp16=fp16, int8=int8,
                           calibration=calibration, sbd_tolerance=sbd_tolerance, force=force, overwrite=overwrite)
    request = plan.request
    plan_note = "" if request.caps.notes == "" else f" ({request.caps.notes})"
    err.print(f"exporting {shown(request.name)} from {shown(request.source)} with the {request.caps.exporter} "
              f"exporter{shown(plan_note)} ...", highlight=False, soft_wrap=True)
    if int8:
        err.print("quantising to int8 and predicting the validation images with both models ...", highlight=False)
    result = run_export(plan)
    _print_tables(result)
    check_result(result, plan.target)
    _conclude(result)


def parity_table(result: "ExportResult") -> Table:
    precision = "fp16" if result.info.precision == "fp16" else "fp32"
    table = Table(title=f"ONNX Runtime (CPU) vs PyTorch ({precision} export vs fp32 model)", title_justify="left")
    for column in ("input shape", "output", "max abs", "max rel", "rtol / atol", ""):
        table.add_column(column, justify="right" if column.startswith("max") else "left")
    for row in result.parity:
        verdict = "ok" if row.ok else ("[red]FAILED[/red]" if not row.error else f"[red]{shown(row.error)}[/red]")
        table.add_row("x".join(map(str, row.shape)), row.output, f"{row.max_abs:.2e}", f"{row.max_rel:.2e}",
                      str(row.tolerance), verdict)
    return table


def _print_tables(result: "ExportResult | Int8Result") -> None:
    """The parity table (and for int8 the task table), printed before any verdict."""
    from instseg.exporters.onnx import ExportResult

    if isinstance(result, ExportResult):
        out.print(f"onnx.checker: ok; {result.info.describe()}", highlight=False, soft_wrap=True)
        out.print(parity_table(result))
        return
    out.print(parity_table(result.fp32))
    if result.fp32.ok:
        out.print(task_table(result))


def _conclude(result: "ExportResult | Int8Result") -> None:
    """What was written, and the warnings a kept file deserves."""
    from instseg.exporters.onnx import ExportResult

    size = result.path.stat().st_size / 2**20
    if isinstance(result, ExportResult):
        if not result.ok:
            err.print("warning: the fp16 model differs from the fp32 PyTorch model by more than the indicative fp16 "
                      "tolerance; compare predictions (instseg evaluate --pred) before deploying it",
                      highlight=False, soft_wrap=True)
        out.print(f"wrote {shown(str(result.path))} ({size:.1f} MB) in {result.seconds:.1f} s", highlight=False,
                  soft_wrap=True)
    else:
        parity = result.parity
        if not parity.ok:
            err.print(f"warning: kept with --force although validation SBD drops by {-parity.change:.4f}, more than "
                      f"--sbd-tolerance {parity.tolerance:g}", highlight=False, soft_wrap=True)
        out.print(f"wrote {shown(str(result.path))} ({size:.1f} MB, int8, calibrated on {shown(result.calibration)}) "
                  f"in {result.seconds:.1f} s", highlight=False, soft_wrap=True)
    out.print(f"next: instseg infer {shown(str(result.path))} IMAGES... --out predictions", highlight=False,
              soft_wrap=True)


def task_table(result: "Int8Result") -> Table:
    """Validation SBD of the fp32 and int8 models, its change, and how alike their label maps are."""
    parity = result.parity
    table = Table(title=f"int8 against fp32 on {parity.images} validation images (the prediction pipeline)",
                  title_justify="left")
    table.add_column("")
    table.add_column("SBD", justify="right")
    table.add_column("")
    verdict = "ok" if parity.ok else "[red]FAILED[/red]"
    table.add_row("validation, fp32", f"{parity.fp32_sbd:.4f}", "")
    table.add_row("validation, int8", f"{parity.int8_sbd:.4f}", "")
    table.add_row("change", f"{parity.change:+.4f}", f"tolerance -{parity.tolerance:g}: {verdict}")
    table.add_row("int8 maps against fp32 maps", f"{parity.agreement:.4f}", f"lowest {parity.lowest_agreement:.4f}")
    return table
