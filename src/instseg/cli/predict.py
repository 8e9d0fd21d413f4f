"""`instseg predict`: instance label maps and pictures for images, with a PyTorch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from instseg.cli.console import err, out, shown
from instseg.cli.options import Device, PredictOptions, plain, take_part, with_predict_options
from instseg.errors import DataError
from instseg.terminal import progress_bar

if TYPE_CHECKING:
    from instseg.io.coco_results import ResultsFile
    from instseg.predictor import Predictor


@with_predict_options
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A run directory (uses best.pt) or a checkpoint file.")],
    device: Device = "auto",
    *,
    options: PredictOptions,
) -> None:
    """Write <stem>_label.png (16-bit instance ids, input size; or .tif) and <stem>_overlay.png per image,
    and with --rois / --geojson the outlines for Fiji and QuPath."""
    from instseg.predictor import load

    options.check()
    predict_to_folder(load(checkpoint, device=plain(device)), options)


def predict_to_folder(model: Predictor, options: PredictOptions) -> None:
    """`Predictor.predict_folder` with the console around it (shared by `predict` and `infer`):
    progress on stderr, a summary on stdout, the time each stage took, every failure listed,
    a DataError when any failed; each prediction also goes into the COCO `--coco` file, when given."""
    from instseg.io.inputs import output_names
    from instseg.predict.pipeline import Prediction
    from instseg.predict.stages import bounded_threads, threads_note

    inputs = options.all_paths()
    paths = take_part(inputs, options.shard)  # this run's part of them, as `predict_folder` takes it
    if options.coco is not None:
        from instseg.predict.slides import refuse_coco

        refuse_coco(paths)
    results = options.results(paths)
    model.set_tiling(options.tile, options.tile_overlap)
    out_dir = options.out_dir
    for path, name in zip(paths, output_names(paths)):
        if name != path.stem:
            err.print(f"note: {shown(str(path))} is written as {shown(name)}_label.{plain(options.label_format)}",
                      highlight=False, soft_wrap=True)
    method = model.cluster_params(options.cluster_overrides()).method
    err.print(f"predicting {len(paths)} image(s) with {shown(model.description)}; "
              f"{method} clustering, {model.geometry} -> {shown(str(out_dir))}", highlight=False, soft_wrap=True)
    sizing = model.describe_object_size(options.write_options()["object_size"])
    threads = threads_note(options.threads or 0, bounded_threads(options.threads), "threads per stage")
    for note in (sizing, threads):
        if note:
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
    with progress_bar("predict", err) as progress:
        task = progress.add_task("predict", total=len(paths))

        def on_result(item: object) -> None:
            progress.advance(task)
            if results is not None and isinstance(item, Prediction):
                results.add(item)

        result = model.predict_folder(inputs, out_dir, on_result=on_result, **options.write_options())
    if result.skipped:
        err.print(f"note: skipped {len(result.skipped)} input(s) in {shown(out_dir)} written by an earlier instseg run "
                  f"(e.g. {shown(result.skipped[0].name)})", highlight=False, soft_wrap=True)
    if result.done:
        err.print(f"note: --skip-existing: {len(result.done)} input(s) already have their outputs in {shown(out_dir)}",
                  highlight=False, soft_wrap=True)
    if result.instances:
        out.print(f"wrote {len(result.instances)} prediction(s) to {shown(str(out_dir))} "
                  f"({sum(result.instances) / len(result.instances):.1f} instances per image on average)",
                  highlight=False, soft_wrap=True)
    if results is not None:
        _write_results(results)
    if len(result.instances) > result.slides:
        err.print(f"note: {result.stage_times.describe(len(result.instances) - result.slides)}", highlight=False,
                  soft_wrap=True)
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
