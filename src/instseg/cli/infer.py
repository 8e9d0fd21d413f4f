"""`instseg infer`: `instseg predict` for an exported ONNX model, without PyTorch.

The same pipeline, clustering and output files as `predict` (`cli.predict.predict_to_folder`),
with `runtime.OnnxRunner` in place of the PyTorch runner. Nothing on this path imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instseg.cli.console import err, shown
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
from instseg.cli.predict import predict_to_folder
from instseg.errors import ConfigError
from instseg.predict.tiling import set_tiling


def infer(
    model: Annotated[Path, typer.Argument(help="An ONNX file written by `instseg export --onnx`.")],
    inputs: Inputs,
    out_dir: OutDir = Path("predictions"),
    provider: Annotated[str, typer.Option(
        help="auto (CUDA if ONNX Runtime can use it, else CPU), cpu or cuda (an error when CUDA cannot be used).")
    ] = "auto",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "--batch", help="Images per run (images of one size share one).")] = 4,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0: its default).")] = 0,
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
    """Write <stem>_label.png (16-bit instance ids, input size) and <stem>_overlay.png per image, as
    `instseg predict` does, with ONNX Runtime. Sizes, clustering defaults and normalisation come
    from the model file."""
    from instseg.runtime import OnnxRunner

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    if threads < 0:
        raise ConfigError(f"--threads {threads}: must be 0 (ONNX Runtime's default) or more")
    check_workers(workers)
    paths = select_inputs(inputs, shard)
    options = output_options(overlays, panels, gt, embeddings, overwrite, resume)
    results = coco_results(coco, gt, overwrite, resume)
    runner = OnnxRunner.open(model, provider, threads)
    set_tiling(runner, tile, tile_overlap)
    note = runner.providers.note()
    if note:
        err.print(f"note: {shown(note)}", highlight=False, soft_wrap=True)
    params = cluster_params(runner.cluster, cluster, min_size, fill_holes, bandwidth)
    predict_to_folder(paths, runner, params, batch_size, out_dir, options,
                      f"{runner.description} on {runner.providers.describe()}", results, workers)
