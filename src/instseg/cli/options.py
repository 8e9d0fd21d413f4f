"""Options shared by the verbs that turn network outputs into instances (`predict`, `infer`,
`evaluate`): clustering, and what `predict` / `infer` write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from instseg.errors import ConfigError
from instseg.instances.clustering import CLUSTER_METHODS, ClusterParams

if TYPE_CHECKING:
    from instseg.io.coco import CocoFile
    from instseg.io.coco_results import ResultsFile
    from instseg.predict.outputs import OutputOptions

Cluster = Annotated[Optional[str], typer.Option(
    "--cluster", help=f"{' or '.join(CLUSTER_METHODS)} (default: the run's, else the library default).")]
MinSize = Annotated[Optional[int], typer.Option(
    "--min-size", help="Drop instances under this many pixels at the working size (default 0: keep all).")]
FillHoles = Annotated[Optional[bool], typer.Option(
    "--fill-holes/--no-fill-holes", help="Give background enclosed by one instance to it (default on).")]
Bandwidth = Annotated[Optional[float], typer.Option(
    "--bandwidth", help="meanshift radius in embedding space (default: the run's delta_d).")]


def cluster_params(base: ClusterParams, cluster: str | None, min_size: int | None, fill_holes: bool | None,
                   bandwidth: float | None) -> ClusterParams:
    """The run's clustering defaults with the options the user gave."""
    return base.override(method=cluster, min_size=min_size, fill_holes=fill_holes, bandwidth=bandwidth)


Tile = Annotated[Optional[int], typer.Option(
    "--tile", help="Runs at a fixed --scale: images larger than this (pixels at that scale) are predicted "
                   "tile by tile and stitched (default: the run's training crop size).")]
TileOverlap = Annotated[Optional[int], typer.Option(
    "--tile-overlap", help="Pixels each tile shares with its neighbour; make it wider than the largest object "
                           "(default: a quarter of the tile).")]


Inputs = Annotated[list[str], typer.Argument(help="Image files, folders or globs (quote globs).")]
OutDir = Annotated[Path, typer.Option("--out", help="Folder for the outputs (flat; created if needed).")]
Overlays = Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write <stem>_overlay.png.")]
Panels = Annotated[bool, typer.Option(help="Write <stem>_panel.png: input / prediction / ground truth.")]
GroundTruth = Annotated[Optional[Path], typer.Option(
    help="Ground truth for the panels, matched by name: a folder of label PNGs, or a COCO file "
         "(whose image ids --coco then uses).")]
CocoResults = Annotated[Optional[Path], typer.Option(
    "--coco", help="Also write the predictions as one COCO file: RLE masks with scores (CVAT imports it; "
                   "`instseg evaluate --coco-gt` scores it).")]
Embeddings = Annotated[bool, typer.Option(help="Write <stem>_embedding.png: 3 PCA components as RGB.")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing files in --out (never done otherwise).")]
Resume = Annotated[bool, typer.Option(help="Skip inputs whose label map is already in --out (a run that stopped).")]
Workers = Annotated[Optional[int], typer.Option(
    help="Threads for each of reading, clustering and writing, which overlap with the network "
         "(default: the cores, up to 4).")]
Shard = Annotated[Optional[str], typer.Option(
    help="K/N: only the K-th of N disjoint parts of the sorted inputs, for N copies on N machines.")]


def select_inputs(inputs: list[str], shard: str | None) -> list[Path]:
    """The inputs a command works on: gathered, then its shard of them."""
    from instseg.io.inputs import gather_inputs, parse_shard, shard as take_shard

    paths = gather_inputs(inputs)
    if shard is None:
        return paths
    try:
        k, n = parse_shard(shard)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return take_shard(paths, k, n)


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")


def output_options(overlays: bool, panels: bool, gt: Path | None, embeddings: bool,
                   overwrite: bool = False, resume: bool = False) -> "OutputOptions":
    """What to write beside each label map."""
    from instseg.io.inputs import label_files, match_key
    from instseg.predict.outputs import OutputOptions

    coco = coco_ground_truth(gt)
    gt_files = ({match_key(image.file_name): coco.labels(image) for image in coco.images} if coco is not None
                else label_files(gt) if gt is not None else {})
    return OutputOptions(overlay=overlays, panels=panels, embeddings=embeddings, gt_files=gt_files,
                         overwrite=overwrite, resume=resume)


def coco_ground_truth(gt: Path | None) -> CocoFile | None:
    """`--gt` as a COCO file, or None for a folder of label PNGs."""
    from instseg.io.coco import load_coco

    if gt is None or gt.suffix.lower() != ".json":
        return None
    return load_coco(gt).require_usable()


def coco_results(path: Path | None, gt: Path | None, overwrite: bool, resume: bool) -> ResultsFile | None:
    """The `--coco` results file to fill, checked before anything is predicted."""
    from instseg.io.coco_results import ResultsFile

    if path is None:
        return None
    if resume:
        raise ConfigError("--coco writes every image of this run into one file: it does not go with --resume")
    return ResultsFile(path, coco_ground_truth(gt), overwrite)
