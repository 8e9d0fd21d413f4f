"""Whole slides predicted in bounded memory: read tile by tile from disk, stitched in a band,
written as they go.

    slide TIFF --(io.slides.Slide.read, tiles with overlap)--> network --> clustering
        --> tiling.Stitcher (a band one tile high) --> final rows --> <name>_label.tif (tiled, deflate)

A TIFF over `limits.SLIDE_PIXELS` never goes through `pipeline.read_source`, which decodes an
image whole. The tiles are those of `pipeline.predict_tiled` (`tiling.plan_tiles`), predicted and
stitched by the same rules in the same order, so the label map is the one the in-memory path
gives; but only one row of tiles of it is in memory: the rows above the next tile row are final
and go to the label file. Reading, the network and clustering overlap on threads
(`stages.ordered_map`), each holding a few tiles. Memory is then a few tiles' network outputs
plus one band of the label map (a 20000 px wide slide with 512 px tiles: 41 MB), whatever
the slide's height, and the overlay, drawn at most `PREVIEW_SIDE` px on its longer side.

The label map is a 32-bit TIFF (ids are not counted before the end), with the slide's pixel
size; outputs that need the whole label map in memory (panels, embeddings, ImageJ ROIs, GeoJSON,
COCO results) are refused for a slide by name, as is a run without a fixed scale (its whole image
would be resized to the working size).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from instseg.errors import ConfigError, DataError, OutputError
from instseg.instances.clustering import ClusterParams
from instseg.io.atomic import cannot_write, sync_folder
from instseg.io.images import display_path, over_decode_limit, tiff_named
from instseg.io.writing import OUTPUT_KEY, read_pixel_size, write_rgb
from instseg.io.microscopy import FIXED, Reading
from instseg.io.pictures import overlay
from instseg.io.slides import Slide, SlideHeader, slide_header
from instseg.predict.pipeline import (Failure, Prediction, Runner, Source, cluster_outputs, network_input,
                                      network_size, run_network)
from instseg.predict.sizing import scaled
from instseg.predict.stages import ordered_map
from instseg.predict.tiling import Stitcher, Tile, plan_tiles

PREVIEW_SIDE = 2048  # a slide's overlay is drawn at most this many pixels on its longer side
LABEL_TILE = 256  # the label TIFF's tile side (napari, QuPath and Fiji read tiled TIFFs by region)
WHOLE_IMAGE_OUTPUTS = {"panel": "--panels", "embedding": "--embeddings", "rois": "--rois", "geojson": "--geojson"}
BIGTIFF_BYTES = 2**32 - 2**25  # classic TIFF offsets are 32-bit: larger label maps are written as BigTIFF


@dataclass
class SlideResult:
    """A slide predicted and written: its instances (the label map stays on disk)."""

    path: Path
    name: str
    instances: int
    index: int = 0


def find_slides(paths: Iterable[Path], tiled: bool = True) -> dict[Path, SlideHeader]:
    """The inputs that are slides (`io.slides.slide_header`), by path. `tiled`: the run predicts at
    a fixed scale (its own, or `--object-size PIXELS`); a run that resizes whole images reads a big
    TIFF whole as before, and only one over the decode limit is a slide (refused, naming the fix)."""
    headers = ((path, slide_header(path)) for path in paths)
    return {path: header for path, header in headers
            if header is not None and (tiled or over_decode_limit(header.height * header.width))}


def refuse_coco(paths: Iterable[Path]) -> None:
    """`--coco` holds every prediction's masks, built in memory from whole label maps: a
    ConfigError naming the first slide among `paths`, before anything is predicted."""
    slides = find_slides(paths)
    if slides:
        path, header = next(iter(slides.items()))
        raise ConfigError(f"--coco: {display_path(path)} ({header.describe()}) is a slide, predicted tile by tile, "
                          "and COCO results are built from whole label maps in memory: leave out --coco, or "
                          "predict the slides in a run of their own")


def refusal(header: SlideHeader, path: Path, runner: Runner, files: Mapping[str, Path],
            auto: bool = False) -> str | None:
    """Why a slide cannot be predicted with this run, these outputs and `--object-size auto`
    (`auto`: it segments a whole image again and again) in one line, None when it can."""
    shown = f"{display_path(path)}: {header.describe()} is a slide, predicted tile by tile"
    if auto:
        return f"{shown}, and --object-size auto segments whole images: give --object-size PIXELS"
    if runner.scale is None:
        return (f"{shown}, which needs a run at a fixed scale (this one resizes whole images to its working "
                f"size): give --object-size PIXELS, the nuclei's size in this slide")
    if not tiff_named(files["label"]):
        return f"{shown}, its label map written as it goes, which only a TIFF can be: pass --label-format tif"
    asked = [WHOLE_IMAGE_OUTPUTS.get(kind, kind) for kind in files if kind not in ("label", "overlay")]
    if asked:
        return f"{shown}, and {', '.join(asked)} need(s) the whole label map in memory: leave it out for slides"
    return None


def predict_slide(path: Path, name: str, index: int, runner: Runner, params: ClusterParams,
                  files: Mapping[str, Path], *, durable: bool = False, workers: int = 2,
                  reading: Reading = FIXED) -> SlideResult | Failure:
    """One slide predicted and written to `files` (kind -> path: `label`, and `overlay` when
    asked; the run's plan has checked that they may be written: `out_folder.plan_outputs`, and
    `refusal` that the slide can be predicted with them); a Failure naming the slide when it
    cannot be read or a tile fails."""
    try:
        with Slide(path, reading) as slide:
            writer = SlideWriter(slide, runner, params, workers)
            _write_labels(files["label"], writer.label_tiles(), slide, read_pixel_size(path), durable)
            if "overlay" in files:
                write_rgb(files["overlay"], overlay(writer.preview_image, writer.preview_labels), output="overlay",
                          durable=durable)
    except (DataError, OutputError) as exc:
        return Failure(path, name, str(exc), index)
    return SlideResult(path, name, writer.instances, index)


class SlideWriter:
    """A slide's label map, final rows first, as the label TIFF's tiles (`label_tiles`); the
    overlay's image and labels at preview size are filled in on the way."""

    def __init__(self, slide: Slide, runner: Runner, params: ClusterParams, workers: int) -> None:
        self.slide, self.runner, self.params, self.workers = slide, runner, params, workers
        self.tile, self.overlap = (max(1, round(n / runner.scale)) for n in (runner.tile, runner.tile_overlap))
        self.step = -(-max(slide.height, slide.width) // PREVIEW_SIDE)  # preview: every step-th pixel
        preview = (-(-slide.height // self.step), -(-slide.width // self.step))
        self.preview_image = np.zeros((*preview, 3), np.float32)
        self.preview_labels = np.zeros(preview, np.int32)
        self.instances = 0
        self._lock = threading.Lock()  # tifffile's file handle is read from one thread at a time

    def label_tiles(self) -> Iterator[np.ndarray]:
        """LABEL_TILE x LABEL_TILE uint32 tiles of the label map in raster order (edge tiles
        zero-padded), gathered in one band of LABEL_TILE rows; each tile is a copy, as tifffile
        may encode several at once."""
        band = np.zeros((LABEL_TILE, -(-self.slide.width // LABEL_TILE) * LABEL_TILE), np.uint32)
        filled = 0
        for rows in self._final_rows():
            while len(rows):
                taken = min(LABEL_TILE - filled, len(rows))
                band[filled:filled + taken, :self.slide.width] = rows[:taken]
                filled, rows = filled + taken, rows[taken:]
                if filled == LABEL_TILE:
                    yield from (band[:, x:x + LABEL_TILE].copy() for x in range(0, band.shape[1], LABEL_TILE))
                    filled = 0
        if filled:
            band[filled:] = 0
            yield from (band[:, x:x + LABEL_TILE].copy() for x in range(0, band.shape[1], LABEL_TILE))

    def _final_rows(self) -> Iterator[np.ndarray]:
        """The label map's rows top to bottom, each batch once no later tile can change it."""
        height, width = self.slide.height, self.slide.width
        stitcher = Stitcher(height, width, rows=self.tile)
        tiles = plan_tiles(height, width, self.tile, self.overlap)
        # at most 2 tiles read ahead per worker, 2 at the network, one at each clustering worker: a
        # 1024 px tile's outputs are 140 MB (32-d embeddings), and clustering it takes about as much again
        read = ordered_map(self._read, tiles, self.workers, 2 * self.workers)
        for part, labels in ordered_map(self._cluster, ordered_map(self._network, read, 1, 2), self.workers,
                                        self.workers):
            if part.y0 > stitcher.top:  # a new row of tiles: the rows above it are final
                yield self._released(stitcher, part.y0)
            stitcher.add(part, labels)
        self.instances = stitcher.next_id - 1  # ids are 1..N, none missing (tiling.py)
        yield self._released(stitcher, height)

    def _released(self, stitcher: Stitcher, row: int) -> np.ndarray:
        top = stitcher.top
        rows = stitcher.release(row)
        first = -(-top // self.step) * self.step  # the first preview row at or below `top`
        self.preview_labels[first // self.step:-(-row // self.step)] = rows[first - top::self.step, ::self.step]
        return rows

    def _read(self, part: Tile) -> tuple[Tile, np.ndarray]:
        with self._lock:
            crop = self.slide.read(part.y0, part.y1, part.x0, part.x1)
        self._sample_preview(part, crop)
        return part, crop

    def _sample_preview(self, part: Tile, crop: np.ndarray) -> None:
        """Copy the preview pixels of this tile's own share (its core) of the slide."""
        y0, y1, x0, x1 = part.core
        ys, xs = (range(-(-a // self.step) * self.step, b, self.step) for a, b in ((y0, y1), (x0, x1)))
        if len(ys) and len(xs):
            self.preview_image[ys[0] // self.step:ys[-1] // self.step + 1, xs[0] // self.step:xs[-1] // self.step + 1] \
                = crop[ys.start - part.y0:ys.stop - part.y0:self.step, xs.start - part.x0:xs.stop - part.x0:self.step]

    def _network(self, item: tuple[Tile, np.ndarray]):
        part, crop = item
        piece = Source(self.slide.path, self.slide.path.stem, crop)
        [outputs] = run_network([(piece, network_input(crop, network_size(*crop.shape[:2], self.runner)))],
                                self.runner)
        return part, outputs

    def _cluster(self, item) -> tuple[Tile, np.ndarray]:
        part, outputs = item
        result = cluster_outputs(outputs, self.runner.max_instances, self.params)
        if not isinstance(result, Prediction):
            raise DataError(f"{result.message} (tile rows {part.y0}..{part.y1}, columns {part.x0}..{part.x1})")
        return part, result.labels


def _write_labels(path: Path, tiles: Iterator[np.ndarray], slide: Slide, pixel_size, durable: bool) -> None:
    """The label TIFF written from its tiles into a temporary sibling, renamed into place when
    whole (a failure removes it: nothing half-written is left, no earlier file is lost)."""
    import tifffile

    extra: dict = {}
    if pixel_size is not None:
        extra = {"resolution": (1e4 / pixel_size.x, 1e4 / pixel_size.y), "resolutionunit": "CENTIMETER"}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            with tifffile.TiffWriter(tmp, bigtiff=slide.height * slide.width * 4 > BIGTIFF_BYTES) as tif:
                tif.write(tiles, shape=(slide.height, slide.width), dtype=np.uint32, tile=(LABEL_TILE, LABEL_TILE),
                          compression="zlib", software="instseg", metadata={OUTPUT_KEY: "label"}, **extra)
            if durable:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
            if durable:
                sync_folder(path.parent)
        except OSError as exc:
            raise cannot_write(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def predict_slides(slides: Mapping[Path, SlideHeader], inputs: list[tuple[Path, str]], runner: Runner,
                   params: ClusterParams, out_dir: Path, endings: Mapping[str, str], *, durable: bool,
                   workers: int, scale: float | None, auto: bool,
                   reading: Reading = FIXED) -> Iterator[tuple[SlideResult | Failure, str | None]]:
    """(result, failure message or None) per slide among `inputs` (path, output name), one slide
    at a time, at the fixed `scale` when given (`--object-size PIXELS`), read as `reading` says
    (the model's, as for the other inputs); `auto`: `--object-size auto`, refused (`refusal`)."""
    for index, (path, name) in enumerate(inputs):
        if path not in slides:
            continue
        files = {kind: out_dir / f"{name}{ending}" for kind, ending in endings.items()}
        with scaled(runner, scale):
            reason = refusal(slides[path], path, runner, files, auto)
            result = Failure(path, name, reason, index) if reason is not None else predict_slide(
                path, name, index, runner, params, files, durable=durable, workers=workers, reading=reading)
        yield result, result.message if isinstance(result, Failure) else None
