"""`instseg predict`: instance label maps and pictures for images, with a PyTorch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from instseg.cli.console import err, out
from instseg.cli.options import (
    Bandwidth,
    Cluster,
    Embeddings,
    FillHoles,
    GroundTruth,
    Inputs,
    MinSize,
    OutDir,
    Overlays,
    Panels,
    cluster_params,
    output_options,
)
from instseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from instseg.core.clustering import ClusterParams
    from instseg.pipeline import OutputOptions, Runner


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory (uses best.pt) or a checkpoint file.")],
    inputs: Inputs,
    out_dir: OutDir = Path("predictions"),
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (images of one size share one).")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    cluster: Cluster = None,
    min_size: MinSize = None,
    fill_holes: FillHoles = None,
    bandwidth: Bandwidth = None,
    overlays: Overlays = True,
    panels: Panels = False,
    gt: GroundTruth = None,
    embeddings: Embeddings = False,
) -> None:
    """Write <stem>_label.png (16-bit instance ids, input size) and <stem>_overlay.png per image."""
    from instseg.core.runner import TorchRunner
    from instseg.pipeline import gather_inputs

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    paths = gather_inputs(inputs)
    options = output_options(overlays, panels, gt, embeddings)
    runner = TorchRunner.from_checkpoint(checkpoint, device)
    params = cluster_params(runner.cluster, cluster, min_size, fill_holes, bandwidth)
    predict_to_folder(paths, runner, params, batch_size, out_dir, options,
                      f"{runner.description} on {runner.device.describe()}")


def predict_to_folder(paths: list[Path], runner: Runner, params: ClusterParams, batch_size: int, out_dir: Path,
                      options: OutputOptions, source: str) -> None:
    """Run the pipeline and write every prediction (shared by `predict` and `infer`): progress
    on stderr, a summary on stdout, every failure listed, and a DataError when any input failed."""
    from instseg.pipeline import Prediction, output_names, predict, write_prediction

    _make_folder(out_dir)
    for path, name in zip(paths, output_names(paths)):
        if name != path.stem:
            err.print(f"note: {escape(str(path))} is written as {escape(name)}_label.png", highlight=False, soft_wrap=True)
    err.print(f"predicting {len(paths)} image(s) with {escape(source)}; "
              f"{params.method} clustering, working size {runner.image_size}px -> {escape(str(out_dir))}",
              highlight=False, soft_wrap=True)

    failures: list[str] = []
    instances = []
    with _progress() as progress:
        task = progress.add_task("predict", total=len(paths))
        for result in predict(paths, runner, params, batch_size):
            if isinstance(result, Prediction):
                try:
                    write_prediction(result, out_dir, options)
                    instances.append(int(result.labels.max(initial=0)))
                except DataError as exc:  # this image's ground truth or files failed: report below, go on
                    failures.append(str(exc))
            else:
                failures.append(result.message)
            progress.advance(task)
    if instances:
        out.print(f"wrote {len(instances)} prediction(s) to {escape(str(out_dir))} "
                  f"({sum(instances) / len(instances):.1f} instances per image on average)", highlight=False, soft_wrap=True)
    for message in failures:
        err.print(f"error: {escape(message)}", highlight=False, soft_wrap=True)
    if failures:
        raise DataError(f"{len(failures)} of {len(paths)} input(s) failed (listed above)")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {folder}: cannot create folder ({exc.strerror or exc})") from exc


def _progress() -> Progress:
    return Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err, transient=False)
