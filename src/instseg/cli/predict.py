"""`instseg predict`: instance label maps and pictures for images, with a PyTorch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from instseg.cli.console import err, out, shown
from instseg.terminal import progress_bar
from instseg.cli.options import (
    Bandwidth,
    Cluster,
    CocoResults,
    Embeddings,
    FillHoles,
    GroundTruth,
    Inputs,
    MinSize,
    OutDir,
    Overlays,
    Overwrite,
    Resume,
    Shard,
    Panels,
    Tile,
    TileOverlap,
    Workers,
    check_workers,
    cluster_params,
    coco_results,
    output_options,
    select_inputs,
)
from instseg.errors import ConfigError, DataError
from instseg.predict.tiling import geometry, set_tiling

if TYPE_CHECKING:
    from instseg.instances.clustering import ClusterParams
    from instseg.io.coco_results import ResultsFile
    from instseg.predict.outputs import OutputOptions
    from instseg.predict.pipeline import Runner


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
    overwrite: Overwrite = False,
    resume: Resume = False,
    shard: Shard = None,
    tile: Tile = None,
    tile_overlap: TileOverlap = None,
    coco: CocoResults = None,
    workers: Workers = None,
) -> None:
    """Write <stem>_label.png (16-bit instance ids, input size) and <stem>_overlay.png per image."""
    from instseg.predict.torch_runner import TorchRunner

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    check_workers(workers)
    paths = select_inputs(inputs, shard)
    options = output_options(overlays, panels, gt, embeddings, overwrite, resume)
    results = coco_results(coco, gt, overwrite, resume)
    runner = TorchRunner.from_checkpoint(checkpoint, device)
    set_tiling(runner, tile, tile_overlap)
    params = cluster_params(runner.cluster, cluster, min_size, fill_holes, bandwidth)
    predict_to_folder(paths, runner, params, batch_size, out_dir, options,
                      f"{runner.description} on {runner.device.describe()}", results, workers)


def predict_to_folder(paths: list[Path], runner: Runner, params: ClusterParams, batch_size: int, out_dir: Path,
                      options: OutputOptions, source: str, results: ResultsFile | None = None,
                      workers: int | None = None) -> None:
    """`outputs.predict_folder` with the console around it (shared by `predict` and `infer`):
    progress on stderr, a summary on stdout, the time each stage took, every failure listed,
    a DataError when any failed; each prediction also goes into the COCO `results` file, when given."""
    from instseg.io.inputs import output_names
    from instseg.predict.outputs import predict_folder
    from instseg.predict.pipeline import Prediction

    for path, name in zip(paths, output_names(paths)):
        if name != path.stem:
            err.print(f"note: {shown(str(path))} is written as {shown(name)}_label.png", highlight=False, soft_wrap=True)
    err.print(f"predicting {len(paths)} image(s) with {shown(source)}; "
              f"{params.method} clustering, {geometry(runner)} -> {shown(str(out_dir))}",
              highlight=False, soft_wrap=True)
    with progress_bar("predict", err) as progress:
        task = progress.add_task("predict", total=len(paths))

        def on_result(item: object) -> None:
            progress.advance(task)
            if results is not None and isinstance(item, Prediction):
                results.add(item)

        result = predict_folder(paths, runner, out_dir, params, batch_size, options, on_result=on_result,
                                workers=workers)
    if result.skipped:
        err.print(f"note: skipped {len(result.skipped)} input(s) in {shown(out_dir)} written by an earlier instseg run "
                  f"(e.g. {shown(result.skipped[0].name)})", highlight=False, soft_wrap=True)
    if result.done:
        err.print(f"note: --resume: {len(result.done)} input(s) already have their outputs in {shown(out_dir)}",
                  highlight=False, soft_wrap=True)
    if result.instances:
        out.print(f"wrote {len(result.instances)} prediction(s) to {shown(str(out_dir))} "
                  f"({sum(result.instances) / len(result.instances):.1f} instances per image on average)",
                  highlight=False, soft_wrap=True)
    if results is not None:
        _write_results(results)
    if result.instances:
        err.print(f"note: {result.stage_times.describe(len(result.instances))}", highlight=False, soft_wrap=True)
    for message in result.failures:
        err.print(f"error: {shown(message)}", highlight=False, soft_wrap=True)
    if result.failures:
        raise DataError(f"{len(result.failures)} of {len(paths)} input(s) failed (listed above)")


def _write_results(results: ResultsFile) -> None:
    results.write()
    out.print(f"wrote {shown(str(results.path))}: {len(results.annotations)} instance(s) of {len(results.images)} "
              "image(s) as COCO (RLE masks, scores)", highlight=False, soft_wrap=True)
    if results.unmatched:
        err.print(f"note: {len(results.unmatched)} image(s) are not in the --gt file and got new ids "
                  f"(e.g. {shown(results.unmatched[0])})", highlight=False, soft_wrap=True)
