"""The CLI's one option vocabulary: a name means the same in every verb (`-o/--out` is the
output, `--workers` processes, `--threads` threads, `--resume` continues a training run), and
choices are enums that `--help` lists. Here: the choice types, `--device`, the clustering
options of `predict`, `infer` and `evaluate`, and `PredictOptions`, the options `predict` and
`infer` share, defined once and added to both commands by `with_predict_options`."""

from __future__ import annotations

import enum
import functools
import inspect
import re
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterable, Optional

import typer

from instseg.errors import ConfigError
from instseg.instances.size import parse_object_size
from instseg.instances.clustering import AUTO, CLUSTER_METHODS, DEFAULT_METHOD

if TYPE_CHECKING:
    from instseg.io.coco import CocoFile
    from instseg.io.coco_results import ResultsFile


def choices(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A `str` enum of `values` for a Typer option: `--help` lists them, and any other value gets
    Typer's "Invalid value" error with the choices. Commands pass on `plain(value)`."""
    return enum.Enum(name, {value: value for value in values}, type=str)


def plain(value: Any) -> Any:
    """A choice as the string the library takes; any other value unchanged."""
    return value.value if isinstance(value, enum.Enum) else value


ClusterMethod = choices("ClusterMethod", CLUSTER_METHODS)
TrainCluster = choices("TrainCluster", (AUTO, *CLUSTER_METHODS))  # auto: measured at the end of training
Provider = choices("Provider", ("auto", "cpu", "cuda"))  # runtime.session.PROVIDER_CHOICES (imports onnxruntime)

DEVICE_METAVAR = "<auto|cpu|cuda|cuda:N>"
_DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(spec: str) -> str:
    """`--device` checked as it is parsed, before any model loads (`device.resolve_device`
    then finds out whether this machine has it); not an enum because of cuda:N."""
    normal = spec.strip().lower()
    if not _DEVICE_SPEC.fullmatch(normal):
        raise ConfigError(f"--device {spec}: choose from auto, cpu, cuda or cuda:N (N: a CUDA device index)")
    return normal


Device = Annotated[str, typer.Option(
    metavar=DEVICE_METAVAR, callback=check_device,
    help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N.")]

Cluster = Annotated[Optional[ClusterMethod], typer.Option(
    "--cluster", help=f"Clustering method (default: the run's, else {DEFAULT_METHOD}).")]
MinSize = Annotated[Optional[int], typer.Option(
    "--min-size", help="Drop instances under this many pixels at the working size (default 0: keep all).")]
FillHoles = Annotated[Optional[bool], typer.Option(
    "--fill-holes/--no-fill-holes", help="Give background enclosed by one instance to it (default on).")]
Bandwidth = Annotated[Optional[float], typer.Option(
    "--bandwidth", help="meanshift radius in embedding space (default: the run's delta_d).")]
SeedThreshold = Annotated[Optional[float], typer.Option(
    "--seed-threshold", help="seeds (spatial objective): no instance starts at a seed scoring below this "
                             "(default 0.5).")]


ObjectSize = Annotated[Optional[str], typer.Option(
    "--object-size", metavar="PIXELS|auto",
    help="The objects' typical size in the input images (the side of a square of their area): images are "
         "resized so that they match the training objects; auto: measured on each image (segmented until its "
         "scale settles). Default: the run's own geometry.")]
Tile = Annotated[Optional[int], typer.Option(
    "--tile", help="Runs at a fixed --scale: images larger than this (pixels at that scale) are predicted "
                   "tile by tile and stitched (default: the run's training crop size).")]
TileOverlap = Annotated[Optional[int], typer.Option(
    "--tile-overlap", help="Pixels each tile shares with its neighbour; make it wider than the largest object "
                           "(default: a quarter of the tile).")]


Inputs = Annotated[list[str], typer.Argument(help="Image files, folders or globs (quote globs).")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs (flat; created if needed).")]
BatchSize = Annotated[int, typer.Option(help="Images per network run (images of one size share one).")]
Overlays = Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write <stem>_overlay.png.")]
Panels = Annotated[bool, typer.Option(help="Write <stem>_panel.png: input / prediction / ground truth.")]
GroundTruth = Annotated[Optional[Path], typer.Option(
    help="Ground truth for the panels, matched by name: a folder of label maps (PNG or TIFF), or a COCO file "
         "(whose image ids --coco then uses).")]
CocoResults = Annotated[Optional[Path], typer.Option(
    "--coco", help="Also write the predictions as one COCO file: RLE masks with scores (CVAT imports it; "
                   "`instseg evaluate --coco-gt` scores it).")]
Embeddings = Annotated[bool, typer.Option(help="Write <stem>_embedding.png: 3 PCA components as RGB.")]
Overwrite = Annotated[bool, typer.Option(
    help="Replace existing outputs in --out (never done otherwise; an input is never replaced).")]
SkipExisting = Annotated[bool, typer.Option(
    help="Skip inputs whose outputs are all in --out already (to finish a run that stopped).")]
Fsync = Annotated[bool, typer.Option(
    help="fsync every output file before it is renamed into place, not the folder once per batch "
         "(slower: milliseconds per file; for outputs that must survive a power cut one by one).")]
LabelFormat = choices("LabelFormat", ("png", "tif"))  # io.writing.LABEL_SUFFIXES
LabelFormatOption = Annotated[LabelFormat, typer.Option(
    "--label-format", help="png: 16-bit <stem>_label.png (up to 65535 instances); tif: <stem>_label.tif, 16-bit, "
                           "or 32-bit above 65535 instances, with the input's pixel size (Fiji, QuPath, napari).")]
Rois = Annotated[bool, typer.Option(
    "--rois/--no-rois", help="Write <stem>_rois.zip: one ImageJ polygon ROI per instance (Fiji's ROI Manager; "
                             "needs pip install 'instseg\\[fiji]').")]
GeoJson = Annotated[bool, typer.Option(
    "--geojson/--no-geojson", help="Write <stem>.geojson: one QuPath detection polygon per instance with its id, "
                                   "score and area (pixel coordinates; needs pip install 'instseg\\[fiji]').")]
GtSuffix = Annotated[Optional[str], typer.Option(
    help="With --gt DIR: use the files whose stem ends with this, matched without it (e.g. _masks: x_masks.tif "
         "is x.png's ground truth).")]
MaxPixels = Annotated[Optional[int], typer.Option(
    "--max-pixels", metavar="PIXELS",
    help="Decode images (PNG, JPEG, TIFFs below a slide's size) of up to this many pixels whole; default: "
         "Pillow's decompression-bomb limit, 89478485. TIFF slides are read tile by tile whatever their size.")]
Threads = Annotated[Optional[int], typer.Option(
    help="Threads for each of reading, clustering and writing, which overlap with the network "
         "(default: the available CPUs, up to 4; at most the available CPUs).")]
Shard = Annotated[Optional[str], typer.Option(
    help="K/N: only the K-th of N disjoint parts of the sorted inputs, for N copies on N machines.")]


def select_inputs(inputs: list[str], shard: str | None) -> list[Path]:
    """The inputs a command works on: gathered, then its shard of them."""
    from instseg.io.inputs import gather_inputs

    return take_part(gather_inputs(inputs), shard)


def take_part(paths: list[Path], shard: str | None) -> list[Path]:
    """`--shard K/N`'s part of the gathered inputs (all of them without it)."""
    from instseg.io.inputs import shard as take_shard
    from instseg.io.inputs import shard_spec

    part = shard_spec(shard)
    return paths if part is None else take_shard(paths, *part)


def coco_ground_truth(gt: Path | None) -> CocoFile | None:
    """`--gt` as a COCO file, or None for a folder of label PNGs."""
    from instseg.io.coco import load_coco

    if gt is None or gt.suffix.lower() != ".json":
        return None
    return load_coco(gt).require_usable()


def coco_results(path: Path | None, gt: Path | None, overwrite: bool, skip_existing: bool,
                 inputs: list[Path]) -> ResultsFile | None:
    """The `--coco` results file to fill, checked before anything is predicted: never one of
    the `inputs` or the ground truth, not even with --overwrite."""
    from instseg.io.coco_results import ResultsFile
    from instseg.predict.out_folder import refuse_inputs

    if path is None:
        return None
    if skip_existing:
        raise ConfigError("--coco writes every image of this run into one file: it does not go with --skip-existing")
    refuse_inputs({path: "the --coco results"}, inputs + ([gt] if gt is not None else []), "choose another --coco file")
    return ResultsFile(path, coco_ground_truth(gt), overwrite)


def check_batch_size(batch_size: int) -> None:
    """Every verb's `--batch-size` rule (predict, infer, evaluate)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")


@dataclass(frozen=True)
class PredictOptions:
    """The options `predict` and `infer` share, each written once here: its name (the field's,
    or its Annotated option's), default (the field's) and help. `with_predict_options` puts them
    into both commands' signatures."""

    inputs: Inputs
    out_dir: OutDir = Path("predictions")
    batch_size: BatchSize = 4
    cluster: Cluster = None
    min_size: MinSize = None
    fill_holes: FillHoles = None
    bandwidth: Bandwidth = None
    seed_threshold: SeedThreshold = None
    overlays: Overlays = True
    panels: Panels = False
    gt: GroundTruth = None
    embeddings: Embeddings = False
    overwrite: Overwrite = False
    skip_existing: SkipExisting = False
    shard: Shard = None
    tile: Tile = None
    tile_overlap: TileOverlap = None
    coco: CocoResults = None
    threads: Threads = None
    object_size: ObjectSize = None
    fsync: Fsync = False
    max_pixels: MaxPixels = None
    label_format: LabelFormatOption = LabelFormat.png
    rois: Rois = False
    geojson: GeoJson = False
    gt_suffix: GtSuffix = None

    def check(self) -> None:
        from instseg.predict.outputs import check_gt_suffix

        check_gt_suffix(self.gt, self.gt_suffix)
        check_batch_size(self.batch_size)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be at least 1")
        if self.max_pixels is not None:
            from instseg.io.slides import check_max_pixels

            check_max_pixels(self.max_pixels)

    def all_paths(self) -> list[Path]:
        """Every input, before `--shard` takes its part (`Predictor.predict_folder` takes it)."""
        return select_inputs(self.inputs, None)

    def results(self, inputs: list[Path]) -> ResultsFile | None:
        return coco_results(self.coco, self.gt, self.overwrite, self.skip_existing, inputs)

    def cluster_overrides(self) -> dict[str, Any]:
        """The clustering options given (ClusterParams fields), for `Predictor.cluster_params`."""
        given = {"method": plain(self.cluster), "min_size": self.min_size, "fill_holes": self.fill_holes,
                 "bandwidth": self.bandwidth, "seed_threshold": self.seed_threshold}
        return {k: v for k, v in given.items() if v is not None}

    def write_options(self) -> dict[str, Any]:
        """`Predictor.predict_folder`'s keywords for what to write, and how."""
        return {"batch_size": self.batch_size, "overlay": self.overlays, "panels": self.panels,
                "embeddings": self.embeddings, "gt": self.gt, "overwrite": self.overwrite,
                "skip_existing": self.skip_existing, "threads": self.threads, "cluster": self.cluster_overrides(),
                "shard": self.shard,
                "object_size": parse_object_size(self.object_size), "fsync": self.fsync,
                "label_format": plain(self.label_format), "rois": self.rois, "geojson": self.geojson,
                "gt_suffix": self.gt_suffix, "max_pixels": self.max_pixels}


def with_predict_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command(<its own parameters>, options: PredictOptions)` as a Typer command: its signature
    is the command's own parameters, then every PredictOptions field; Typer's values for the
    fields reach the command as one PredictOptions."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]
    hints = typing.get_type_hints(PredictOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=inspect.Parameter.empty if f.default is MISSING else f.default)
              for f in fields(PredictOptions)]
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared  # Typer passes keywords
    names = [f.name for f in fields(PredictOptions)]

    @functools.wraps(command)
    def run(**values: Any) -> None:
        options = PredictOptions(**{name: values.pop(name) for name in names})
        return command(**values, options=options)

    run.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


NormalizeChoice = choices("NormalizeChoice", ("fixed", "percentile"))  # io.microscopy.NORMALIZE
Normalize = Annotated[NormalizeChoice, typer.Option(
    "--normalize", help="How image intensities become 0-1 (recorded with the model; prediction repeats it): fixed: "
                        "by dtype (uint8 / 255, uint16 / 65535, floats as they are); percentile: per image and "
                        "channel, the 1st-99.8th percentiles (csbdeep's; camera data of any bit depth).")]
Channels = Annotated[Optional[str], typer.Option(
    "--channels", metavar="I[,J[,K]]",
    help="Which channels of each file feed the network's 3 inputs (recorded with the model), from 0: one is "
         "repeated (0: one fluorescence channel), two leave the third at 0. Default: grey, RGB or RGBA files "
         "as they are; other channel counts are refused.")]
