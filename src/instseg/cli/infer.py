"""`instseg infer`: `instseg predict` for an exported ONNX model, without PyTorch.

The same pipeline, clustering and output files as `predict` (`cli.predict.predict_to_folder`):
`instseg.load(MODEL.onnx)` runs it with ONNX Runtime. Nothing on this path imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instseg.cli.console import err, shown
from instseg.cli.options import PredictOptions, Provider, plain, with_predict_options
from instseg.cli.predict import predict_to_folder
from instseg.errors import ConfigError


@with_predict_options
def infer(
    model: Annotated[Path, typer.Argument(help="An ONNX file written by `instseg export`.")],
    provider: Annotated[Provider, typer.Option(
        help="auto (CUDA if ONNX Runtime can use it, else the CPU), cpu, or cuda (an error when CUDA cannot be "
             "used).")] = Provider.auto,
    intra_op_threads: Annotated[int, typer.Option(
        help="Threads ONNX Runtime uses inside one network run (its intra-op threads; 0: its default; at most "
             "the available CPUs).")] = 0,
    *,
    options: PredictOptions,
) -> None:
    """Write <stem>_label.png (16-bit instance ids, input size; or .tif) and <stem>_overlay.png per image
    (and the outlines asked for), as `instseg predict` does, with ONNX Runtime. Sizes, clustering
    defaults and normalisation come from the model file."""
    from instseg.limits import at_most_cpus
    from instseg.predict.stages import threads_note
    from instseg.predictor import load_onnx

    options.check()
    if intra_op_threads < 0:
        raise ConfigError(f"--intra-op-threads {intra_op_threads}: must be 0 (ONNX Runtime's default) or more")
    predictor = load_onnx(model, provider=plain(provider), intra_op_threads=intra_op_threads)
    for note in (predictor.runner.providers.note(),
                 threads_note(intra_op_threads, at_most_cpus(intra_op_threads), "ONNX Runtime intra-op threads")):
        if note:
            err.print(f"note: {shown(note)}", highlight=False, soft_wrap=True)
    predict_to_folder(predictor, options)
