"""Prediction files: the label map and pictures of one Prediction, and a whole folder of inputs
predicted and written (what `instseg predict` and `instseg infer` do, as a library call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from instseg.errors import ConfigError, DataError
from instseg.instances.clustering import ClusterParams
from instseg.io.coco import CocoLabels
from instseg.io.images import prediction_output_kind, read_label_map, write_label_map, write_rgb
from instseg.io.inputs import match_key, output_names
from instseg.io.pictures import colorize, embedding_rgb, overlay, panel
from instseg.metrics.scores import count_instances
from instseg.instances.size import AUTO
from instseg.predict.pipeline import Failure, Prediction, Runner, read_sources
from instseg.predict.sizing import ObjectSize, predict_sized, run_size, scaled
from instseg.predict.stages import StageTimes, default_workers, predict_overlapped


@dataclass(frozen=True)
class OutputOptions:
    overlay: bool = True
    panels: bool = False  # input / prediction / ground truth (when found in gt_files)
    embeddings: bool = False  # PCA picture of the embedding map
    gt_files: dict[str, Path | CocoLabels] = field(default_factory=dict)  # match key -> label PNG or COCO annotations
    overwrite: bool = False  # replace existing files of the same names (never done unasked)
    skip_existing: bool = False  # skip inputs whose label map is already in the output folder


def ground_truth_files(gt: Path | None) -> dict[str, Path | CocoLabels]:
    """`--gt`: a COCO file's images, or a folder's label maps, by match key (none: {})."""
    from instseg.io.coco import load_coco
    from instseg.io.inputs import label_files

    if gt is None:
        return {}
    if gt.suffix.lower() == ".json":
        coco = load_coco(gt).require_usable()
        return {match_key(image.file_name): coco.labels(image) for image in coco.images}
    return label_files(gt)


def _ground_truth(prediction: Prediction, gt_files: dict[str, Path]) -> np.ndarray | None:
    path = gt_files.get(match_key(prediction.path))
    if path is None:
        return None
    gt = path.decode(prediction.labels.shape) if isinstance(path, CocoLabels) else read_label_map(path)
    if gt.shape != prediction.labels.shape:
        raise DataError(f"{path}: ground truth is {gt.shape[1]}x{gt.shape[0]} but {prediction.path} is "
                        f"{prediction.labels.shape[1]}x{prediction.labels.shape[0]}")
    return gt


def _pictures(prediction: Prediction, options: OutputOptions) -> dict[str, np.ndarray]:
    pictures = {}
    if options.overlay:
        pictures["overlay"] = overlay(prediction.image, prediction.labels)
    if options.panels:
        tiles = [("input", prediction.image),
                 (f"prediction ({int(prediction.labels.max(initial=0))})", colorize(prediction.labels))]
        gt = _ground_truth(prediction, options.gt_files)
        if gt is not None:
            tiles.append((f"ground truth ({count_instances(gt)})", colorize(gt)))
        pictures["panel"] = panel([tiles])
    if options.embeddings:
        if prediction.embedding is None:
            raise DataError(f"{prediction.path}: predicted tile by tile (larger than the tile), so there is no "
                            "single embedding map to draw; leave out --embeddings or raise --tile")
        pictures["embedding"] = embedding_rgb(prediction.embedding, prediction.foreground)
    return pictures


def write_prediction(prediction: Prediction, out_dir: Path, options: OutputOptions = OutputOptions()) -> list[Path]:
    """Write `<name>_label.png` (16-bit ids, input size) and the pictures asked for
    (`<name>_overlay.png`, `_panel.png`, `_embedding.png`); all are drawn before any is written."""
    pictures = _pictures(prediction, options)
    files = [(out_dir / f"{prediction.name}_{kind}.png", kind, array)
             for kind, array in [("label", prediction.labels), *pictures.items()]]
    clash = next((path for path, _, _ in files if path.exists() or path.is_symlink()), None)
    if clash is not None and not options.overwrite:
        raise DataError(f"{clash}: exists and this run did not write it, so it is not replaced "
                        f"(the output of {prediction.path}; pass --overwrite, or choose another --out)")
    written = []
    for path, kind, array in files:
        try:
            (write_label_map if kind == "label" else write_rgb)(path, array, output=kind)
        except OSError as exc:
            raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        written.append(path)
    return written


@dataclass
class FolderResult:
    """What `predict_folder` did: instances per written image, one line per failed input, and
    the inputs skipped because they are outputs of an earlier run in the output folder, or
    (with `skip_existing`) because their outputs are there already."""

    instances: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    done: list[Path] = field(default_factory=list)
    stage_times: StageTimes = field(default_factory=StageTimes)  # where the time went (pipelined)


def earlier_outputs(paths: Sequence[Path], out_dir: Path) -> list[Path]:
    """The inputs that lie in `out_dir` and were written by instseg (not images to predict)."""
    out = out_dir.resolve()
    return [path for path in paths if path.resolve().parent == out and prediction_output_kind(path)]


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {folder}: cannot create folder ({exc.strerror or exc})") from exc


def _overlapped(runner: Runner, scale: float | None, *args: Any) -> Iterator[Any]:
    """`stages.predict_overlapped(*args)` with the runner at fixed `scale` (None: its own)."""
    with scaled(runner, scale):
        yield from predict_overlapped(args[0], args[1], runner, *args[2:])


def predict_folder(paths: Sequence[Path], runner: Runner, out_dir: Path, params: ClusterParams | None = None,
                   batch_size: int = 4, options: OutputOptions = OutputOptions(),
                   on_result: Callable[[Prediction | Failure], None] | None = None,
                   threads: int | None = None, object_size: ObjectSize = None) -> FolderResult:
    """Predict every input and write its files to `out_dir`; a failed input (unreadable, NaN
    outputs, unwritable) is recorded and the others go on. Reading, the network, clustering
    and writing overlap (`predict.stages`, `threads` per CPU stage), except with
    `object_size` auto, which segments each image until its scale settles (`predict.sizing`);
    `on_result` sees each result in `pipeline.predict`'s order (progress bars)."""
    make_folder(out_dir)
    result = FolderResult(skipped=earlier_outputs(paths, out_dir))
    skipped = set(result.skipped)
    todo = [(path, name) for path, name in zip(paths, output_names(paths)) if path not in skipped]
    if options.skip_existing:  # names come from the whole input list, so they do not shift between runs
        finished = [(out_dir / f"{name}_label.png").exists() for _, name in todo]
        result.done = [path for (path, _), done in zip(todo, finished) if done]
        todo = [pair for pair, done in zip(todo, finished) if not done]

    def write(item: Prediction | Failure) -> tuple[Prediction | Failure, str | None]:
        if isinstance(item, Failure):
            return item, item.message
        try:
            write_prediction(item, out_dir, options)
        except DataError as exc:  # this image's ground truth or files failed: record it, go on
            return item, str(exc)
        return item, None

    paths_todo, names_todo = [path for path, _ in todo], [name for _, name in todo]
    params = params or runner.cluster
    if object_size == AUTO:
        written = (write(item) for item in predict_sized(read_sources(paths_todo, names_todo), runner, params,
                                                         batch_size, AUTO))
    else:
        fixed = None if object_size is None else run_size(runner) / float(object_size)
        written = _overlapped(runner, fixed, paths_todo, names_todo, params, batch_size, write,
                              threads or default_workers(), result.stage_times)
    for item, failure in written:
        if failure is None:
            result.instances.append(int(item.labels.max(initial=0)))
        else:
            result.failures.append(failure)
        if on_result is not None:
            on_result(item)
    return result
