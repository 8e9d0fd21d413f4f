"""Prediction files: the label map and pictures of one Prediction, and a whole folder of inputs
predicted and written (what `instseg predict` and `instseg infer` do, as a library call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import AbstractSet, Any, Callable, Iterator, Sequence

import numpy as np

from instseg.errors import ConfigError, DataError, OutputError
from instseg.instances.clustering import ClusterParams
from instseg.io.annotations import imagej_rois, outlines, qupath_geojson, require_packages
from instseg.io.atomic import atomic_write_bytes, cannot_write, sync_folder
from instseg.io.coco import CocoLabels
from instseg.io.coco_results import instance_scores
from instseg.io.images import display_path, read_label_map
from instseg.io.writing import (
    LABEL_SUFFIXES, check_label_fits, prediction_output_kind, read_pixel_size, write_label_map, write_rgb)
from instseg.io.inputs import match_key, output_names
from instseg.io.pictures import colorize, embedding_rgb, overlay, panel
from instseg.metrics.scores import count_instances
from instseg.instances.size import AUTO
from instseg.predict.out_folder import locked, plan_outputs
from instseg.predict.pipeline import Failure, Prediction, Runner, read_sources
from instseg.predict.sizing import ObjectSize, predict_sized, run_size, scaled
from instseg.predict.slides import SlideResult, find_slides, predict_slides
from instseg.predict.stages import StageTimes, bounded_threads, predict_overlapped


@dataclass(frozen=True)
class OutputOptions:
    overlay: bool = True
    panels: bool = False  # input / prediction / ground truth (when found in gt_files)
    embeddings: bool = False  # PCA picture of the embedding map
    gt_files: dict[str, Path | CocoLabels] = field(default_factory=dict)  # match key -> label map or COCO annotations
    overwrite: bool = False  # replace existing outputs of the same names (never done unasked; never an input)
    skip_existing: bool = False  # skip inputs whose outputs are all in the output folder already
    fsync: bool = False  # fsync every file before it is renamed into place (default: the folder, once per batch)
    label_format: str = "png"  # "png" (16-bit) or "tif" (16- or 32-bit, with the input's pixel size)
    rois: bool = False  # an ImageJ ROI zip of the instances' outlines
    geojson: bool = False  # a QuPath GeoJSON FeatureCollection of them

    def __post_init__(self) -> None:
        """Refuse an unknown label format, and outlines without their packages, before any work."""
        if self.label_format not in LABEL_SUFFIXES:
            raise ConfigError(f"--label-format {self.label_format}: choose from {', '.join(LABEL_SUFFIXES)}")
        for option, asked in (("--rois", self.rois), ("--geojson", self.geojson)):
            if asked:
                require_packages(option)

    def endings(self) -> dict[str, str]:
        """The files written per input, kind -> what follows the input's name: the label map,
        then the pictures asked for (`_<kind>.png`), then the outline files asked for."""
        pictures = (("overlay", self.overlay), ("panel", self.panels), ("embedding", self.embeddings))
        return {"label": f"_label{LABEL_SUFFIXES[self.label_format]}",
                **{kind: f"_{kind}.png" for kind, asked in pictures if asked},
                **({"rois": "_rois.zip"} if self.rois else {}), **({"geojson": ".geojson"} if self.geojson else {})}


def check_gt_suffix(gt: Path | None, suffix: str | None) -> None:
    """A ConfigError when `--gt-suffix` has no --gt folder to pick files in (or is no suffix)."""
    from instseg.io.inputs import check_suffix

    check_suffix("--gt-suffix", suffix)
    if suffix is not None and gt is None:
        raise ConfigError("--gt-suffix picks files in a --gt folder: give --gt DIR with it")
    if suffix is not None and gt.suffix.lower() == ".json":
        raise ConfigError(f"--gt-suffix picks files in a --gt folder, and {display_path(gt)} is a COCO file")


def ground_truth_files(gt: Path | None, suffix: str | None = None) -> dict[str, Path | CocoLabels]:
    """`--gt`: a COCO file's images, or a folder's label maps (PNG or TIFF; with `suffix`, those
    whose stem ends with it, matched without it: `--gt-suffix`), by match key (none: {})."""
    from instseg.io.coco import load_coco
    from instseg.io.inputs import label_files

    check_gt_suffix(gt, suffix)
    if gt is None:
        return {}
    if gt.suffix.lower() == ".json":
        coco = load_coco(gt).require_usable()
        return {match_key(image.file_name): coco.labels(image) for image in coco.images}
    return label_files(gt, suffix)


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


def _outlines(prediction: Prediction, options: OutputOptions) -> dict[str, bytes]:
    """The outline files asked for, as their bytes (`io.annotations`)."""
    if not (options.rois or options.geojson):
        return {}
    traced, files = outlines(prediction.labels), {}
    if options.rois:
        files["rois"] = imagej_rois(traced)
    if options.geojson:
        scores = instance_scores(prediction.labels, prediction.probability)
        files["geojson"] = qupath_geojson(traced, prediction.labels, scores).encode()
    return files


def write_prediction(prediction: Prediction, out_dir: Path, options: OutputOptions = OutputOptions(),
                     replace: AbstractSet[Path] = frozenset()) -> list[Path]:
    """Write `<name>_label.png` (16-bit ids, input size; `.tif` with `options.label_format`,
    with the input's pixel size), the pictures asked for (`<name>_overlay.png`, `_panel.png`,
    `_embedding.png`) and the outlines (`<name>_rois.zip`, `<name>.geojson`); all are drawn
    before any is written. An existing file is replaced only with `options.overwrite` or when it
    is in `replace` (the run's plan, `out_folder.plan_outputs`). Each file is renamed into place
    whole; without `options.fsync` it is left to the caller to sync the folder (`predict_folder`
    does, per batch)."""
    files = [(out_dir / f"{prediction.name}{ending}", kind) for kind, ending in options.endings().items()]
    clash = next((path for path, _ in files if (path.exists() or path.is_symlink()) and path not in replace), None)
    if clash is not None and not options.overwrite:
        raise OutputError(f"{display_path(clash)}: exists and this run did not write it, so it is not replaced "
                          f"(the output of {display_path(prediction.path)}; pass --overwrite, or choose another --out)")
    check_label_fits(files[0][0], prediction.labels)
    pictures, outlines = _pictures(prediction, options), _outlines(prediction, options)
    for path, kind in files:
        if kind == "label":
            pixel_size = read_pixel_size(prediction.path) if options.label_format == "tif" else None
            write_label_map(path, prediction.labels, output=kind, durable=options.fsync, pixel_size=pixel_size)
        elif kind in outlines:
            atomic_write_bytes(path, outlines[kind], durable=options.fsync)
        else:
            write_rgb(path, pictures[kind], output=kind, durable=options.fsync)
    return [path for path, _ in files]


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
    slides: int = 0  # written inputs that were slides (`predict.slides`: not in the stage times)


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
        yield from predict_overlapped(args[0], args[1], runner, *args[2:], reading=runner.reading)


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
    plan = plan_outputs(inputs, out_dir, options.endings(), overwrite=options.overwrite,
                        skip_existing=options.skip_existing, protected=ground_truth_paths(options.gt_files))
    result.done = plan.done
    tiled = runner.scale is not None or object_size not in (None, AUTO)
    slides = find_slides((path for path, _ in plan.todo), tiled)  # big TIFFs predicted from disk (predict.slides)
    slide_inputs, plan.todo = plan.todo, [item for item in plan.todo if item[0] not in slides]

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
        sources = read_sources(paths_todo, names_todo, runner.reading)
        written = (write(item) for item in predict_sized(sources, runner, params, batch_size, AUTO))
    else:
        fixed = None if object_size is None else run_size(runner) / float(object_size)
        written = _overlapped(runner, fixed, paths_todo, names_todo, params, batch_size, write, threads,
                              result.stage_times)
    if slides:
        written = chain(written, predict_slides(
            slides, slide_inputs, runner, params, out_dir, options.endings(), durable=options.fsync, workers=threads,
            scale=None if object_size in (None, AUTO) else run_size(runner) / float(object_size),
            auto=object_size == AUTO, reading=runner.reading))
    for item, failure in written:
        if failure is None:
            slide = isinstance(item, SlideResult)
            result.instances.append(item.instances if slide else int(item.labels.max(initial=0)))
            result.slides += slide
            if not options.fsync and len(result.instances) % batch_size == 0:
                _sync(out_dir)
        else:
            result.failures.append(failure)
        if on_result is not None:
            on_result(item)
    if not options.fsync:
        _sync(out_dir)
    return result
