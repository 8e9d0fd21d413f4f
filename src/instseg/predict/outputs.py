"""Prediction files: the label map and pictures of one Prediction, and a whole folder of inputs
predicted and written (what `instseg predict` and `instseg infer` do, as a library call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Callable, Iterator, Sequence

import numpy as np

from instseg.errors import ConfigError, DataError, OutputError
from instseg.instances.clustering import ClusterParams
from instseg.io.atomic import cannot_write, sync_folder
from instseg.io.coco import CocoLabels
from instseg.io.images import display_path, prediction_output_kind, read_label_map, write_label_map, write_rgb
from instseg.io.inputs import match_key, output_names
from instseg.io.pictures import colorize, embedding_rgb, overlay, panel
from instseg.metrics.scores import count_instances
from instseg.instances.size import AUTO
from instseg.predict.out_folder import locked, plan_outputs
from instseg.predict.pipeline import Failure, Prediction, Runner, read_sources
from instseg.predict.sizing import ObjectSize, predict_sized, run_size, scaled
from instseg.predict.stages import StageTimes, bounded_threads, predict_overlapped


@dataclass(frozen=True)
class OutputOptions:
    overlay: bool = True
    panels: bool = False  # input / prediction / ground truth (when found in gt_files)
    embeddings: bool = False  # PCA picture of the embedding map
    gt_files: dict[str, Path | CocoLabels] = field(default_factory=dict)  # match key -> label PNG or COCO annotations
    overwrite: bool = False  # replace existing outputs of the same names (never done unasked; never an input)
    skip_existing: bool = False  # skip inputs whose outputs are all in the output folder already
    fsync: bool = False  # fsync every file before it is renamed into place (default: the folder, once per batch)

    def kinds(self) -> list[str]:
        """The files written per input, as `<name>_<kind>.png`: the label map, then the pictures asked for."""
        return ["label", *(kind for kind, asked in (("overlay", self.overlay), ("panel", self.panels),
                                                    ("embedding", self.embeddings)) if asked)]


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


def write_prediction(prediction: Prediction, out_dir: Path, options: OutputOptions = OutputOptions(),
                     replace: AbstractSet[Path] = frozenset()) -> list[Path]:
    """Write `<name>_label.png` (16-bit ids, input size) and the pictures asked for
    (`<name>_overlay.png`, `_panel.png`, `_embedding.png`); all are drawn before any is written.
    An existing file is replaced only with `options.overwrite` or when it is in `replace` (the
    run's plan, `out_folder.plan_outputs`). Each file is renamed into place whole; without
    `options.fsync` it is left to the caller to sync the folder (`predict_folder` does, per batch)."""
    pictures = _pictures(prediction, options)
    files = [(out_dir / f"{prediction.name}_{kind}.png", kind, array)
             for kind, array in [("label", prediction.labels), *pictures.items()]]
    clash = next((path for path, _, _ in files if (path.exists() or path.is_symlink()) and path not in replace), None)
    if clash is not None and not options.overwrite:
        raise OutputError(f"{display_path(clash)}: exists and this run did not write it, so it is not replaced "
                          f"(the output of {display_path(prediction.path)}; pass --overwrite, or choose another --out)")
    for path, kind, array in files:
        (write_label_map if kind == "label" else write_rgb)(path, array, output=kind, durable=options.fsync)
    return [path for path, _, _ in files]


@dataclass
class FolderResult:
    """What `predict_folder` did: instances per written image, one line per failed input, and
    the inputs skipped because they are outputs of an earlier run in the output folder, or
    (with `skip_existing`) because all their outputs are there already."""

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


def _sync(folder: Path) -> None:
    """Make the renames into `folder` durable (one fsync for a batch of outputs)."""
    try:
        sync_folder(folder)
    except OSError as exc:
        raise cannot_write(folder, exc) from exc


def ground_truth_paths(gt_files: dict[str, Path | CocoLabels]) -> list[Path]:
    """The label files among the ground truth (COCO annotations come from one file, not these)."""
    return [path for path in gt_files.values() if isinstance(path, Path)]


def predict_folder(paths: Sequence[Path], runner: Runner, out_dir: Path, params: ClusterParams | None = None,
                   batch_size: int = 4, options: OutputOptions = OutputOptions(),
                   on_result: Callable[[Prediction | Failure], None] | None = None,
                   threads: int | None = None, object_size: ObjectSize = None,
                   shard: tuple[int, int] | None = None) -> FolderResult:
    """Predict every input and write its files to `out_dir`; a failed input (unreadable, NaN
    outputs, unwritable) is recorded and the others go on. The folder is locked and every
    output checked before the first image is read (`out_folder`): a clash fails the whole run
    at once, with nothing computed; `shard` (K, N): `paths` are that part of a sharded run,
    whose other parts may write into `out_dir` at the same time. Reading, the network, clustering and writing overlap
    (`predict.stages`, `threads` per CPU stage, at most the available CPUs), except with
    `object_size` auto, which segments each image until its scale settles (`predict.sizing`);
    `on_result` sees each result in `pipeline.predict`'s order (progress bars). The folder is
    synced once per `batch_size` written inputs and at the end."""
    make_folder(out_dir)
    with locked(out_dir, shard):
        return _predict_into(paths, runner, out_dir, params or runner.cluster, batch_size, options, on_result,
                             bounded_threads(threads), object_size)


def _predict_into(paths: Sequence[Path], runner: Runner, out_dir: Path, params: ClusterParams, batch_size: int,
                  options: OutputOptions, on_result: Callable[[Prediction | Failure], None] | None, threads: int,
                  object_size: ObjectSize) -> FolderResult:
    """`predict_folder` with the folder locked."""
    result = FolderResult(skipped=earlier_outputs(paths, out_dir))
    skipped = set(result.skipped)
    inputs = [(path, name) for path, name in zip(paths, output_names(paths)) if path not in skipped]
    plan = plan_outputs(inputs, out_dir, options.kinds(), overwrite=options.overwrite,
                        skip_existing=options.skip_existing, protected=ground_truth_paths(options.gt_files))
    result.done = plan.done

    def write(item: Prediction | Failure) -> tuple[Prediction | Failure, str | None]:
        if isinstance(item, Failure):
            return item, item.message
        try:
            write_prediction(item, out_dir, options, plan.replace)
        except (DataError, OutputError) as exc:  # this image's ground truth or files failed: record it, go on
            return item, str(exc)
        return item, None

    paths_todo, names_todo = [path for path, _ in plan.todo], [name for _, name in plan.todo]
    if object_size == AUTO:
        written = (write(item) for item in predict_sized(read_sources(paths_todo, names_todo), runner, params,
                                                         batch_size, AUTO))
    else:
        fixed = None if object_size is None else run_size(runner) / float(object_size)
        written = _overlapped(runner, fixed, paths_todo, names_todo, params, batch_size, write, threads,
                              result.stage_times)
    for item, failure in written:
        if failure is None:
            result.instances.append(int(item.labels.max(initial=0)))
            if not options.fsync and len(result.instances) % batch_size == 0:
                _sync(out_dir)
        else:
            result.failures.append(failure)
        if on_result is not None:
            on_result(item)
    if not options.fsync:
        _sync(out_dir)
    return result
