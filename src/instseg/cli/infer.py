"""`instseg infer`: `instseg predict` for an exported ONNX model, without PyTorch.

The same pipeline, clustering and output files as `predict` (`cli.predict.predict_to_folder`),
with `runtime.OnnxRunner` in place of the PyTorch runner. Nothing on this path imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from instseg.cli.cluster_options import Bandwidth, Cluster, FillHoles, MinSize, cluster_params
from instseg.cli.console import err
from instseg.cli.predict import predict_to_folder
from instseg.errors import ConfigError


def infer(
    model: Annotated[Path, typer.Argument(help="An ONNX file written by `instseg export --onnx`.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs (quote globs).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the outputs (flat; created if needed).")] = Path(
        "predictions"),
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
    overlays: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write <stem>_overlay.png.")] = True,
    panels: Annotated[bool, typer.Option(help="Write <stem>_panel.png: input / prediction / ground truth.")] = False,
    gt: Annotated[Optional[Path], typer.Option(help="Ground-truth label PNGs for the panels (matched by name).")] = None,
    embeddings: Annotated[bool, typer.Option(help="Write <stem>_embedding.png: 3 PCA components as RGB.")] = False,
) -> None:
    """Write <stem>_label.png (16-bit instance ids, input size) and <stem>_overlay.png per image, as
    `instseg predict` does, with ONNX Runtime. Sizes, clustering defaults and normalisation come
    from the model file."""
    from instseg.pipeline import OutputOptions, gather_inputs, label_files
    from instseg.runtime import OnnxRunner

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    if threads < 0:
        raise ConfigError(f"--threads {threads}: must be 0 (ONNX Runtime's default) or more")
    paths = gather_inputs(inputs)
    options = OutputOptions(overlay=overlays, panels=panels, embeddings=embeddings,
                            gt_files=label_files(gt) if gt is not None else {})
    runner = OnnxRunner.open(model, provider, threads)
    note = runner.providers.note()
    if note:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    params = cluster_params(runner.cluster, cluster, min_size, fill_holes, bandwidth)
    predict_to_folder(paths, runner, params, batch_size, out_dir, options,
                      f"{runner.description} on {runner.providers.describe()}")
