"""Instance outlines for the tools microscopists annotate in: an ImageJ / Fiji ROI zip (roifile)
and a QuPath GeoJSON FeatureCollection, both traced from a label map (`predict --rois / --geojson`).

Each instance becomes one polygon: the outline of its largest connected part (scikit-image's
`find_contours` at level 0.5 on the instance's mask, vertices on straight runs dropped), in
pixel coordinates of the input image whose origin is the top-left corner of the first pixel
(ImageJ's and QuPath's convention: pixel (x, y) covers [x, x + 1] x [y, y + 1]). Holes are not
kept (predicted instances have none unless `--no-fill-holes`). The GeoJSON features carry the
instance's id, score (mean foreground probability, `coco_results.instance_scores`) and area in
pixels, with QuPath's `"objectType": "detection"` (the type QuPath gives cells: light to hold
by the thousand, measured per object). Both need the optional `instseg[fiji]` packages.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np

from instseg.errors import MissingDependencyError
from instseg.io.writing import OUTPUT_KEY

EXTRA = "fiji"  # the optional dependencies: pip install "instseg[fiji]"
ROIS_COMMENT = f"{OUTPUT_KEY}: rois".encode()  # the zip comment that marks a ROI zip as instseg's
GEOJSON_START = json.dumps({OUTPUT_KEY: "geojson"})[:-1].encode()  # how instseg's GeoJSON files begin


def _require(module: str, option: str) -> Any:
    """An optional package, or a MissingDependencyError naming the option and the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"skimage.measure": "scikit-image"}.get(module, module)
        raise MissingDependencyError(f"{option} needs the {package} package: "
                                     f"pip install \"instseg[{EXTRA}]\"") from None


def require_packages(option: str) -> None:
    """A MissingDependencyError naming `option` (--rois or --geojson) when a package it needs
    is not installed: checked before anything is predicted."""
    for module in ("skimage.measure", *(("roifile",) if option == "--rois" else ())):
        _require(module, option)


Outline = tuple[int, np.ndarray]  # an instance's id, and its closed ring: N x 2 float (x, y), last = first


def outlines(labels: np.ndarray) -> list[Outline]:
    """The outline of every instance of a label map, in id order (`--rois` and `--geojson`
    share one tracing)."""
    from scipy import ndimage

    measure = _require("skimage.measure", "--rois / --geojson")
    traced = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.pad(labels[box] == index, 1)  # a border of background closes every contour
        contour = max(measure.find_contours(mask.astype(np.uint8), 0.5), key=len)
        rows = contour[:, 0] + box[0].start - 1 + 0.5  # pixel centres -> corner-origin coordinates
        cols = contour[:, 1] + box[1].start - 1 + 0.5
        traced.append((index, _corners(np.stack([cols, rows], axis=1))))
    return traced


def _corners(ring: np.ndarray) -> np.ndarray:
    """A closed ring without the vertices that lie on a straight run (the same polygon, exactly):
    a traced outline has one vertex per pixel edge it crosses."""
    points = ring[:-1]
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    kept = points[np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9]
    return np.concatenate([kept, kept[:1]])


def imagej_rois(traced: list[Outline]) -> bytes:
    """A zip of one ImageJ polygon ROI per outline, named by its id (zero-padded, so Fiji's
    ROI Manager lists them in order); what `roifile.roiwrite` writes, built in memory."""
    roifile = _require("roifile", "--rois")
    width = len(str(max((index for index, _ in traced), default=0)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.comment = ROIS_COMMENT
        for index, ring in traced:
            roi = roifile.ImagejRoi.frompoints(ring[:-1].astype(np.float32), name=f"{index:0{width}d}")
            roi.roitype = roifile.ROI_TYPE.POLYGON  # frompoints makes a freehand ROI; an outline is a polygon
            archive.writestr(f"{roi.name}.roi", roi.tobytes())
    return buffer.getvalue()


def qupath_geojson(traced: list[Outline], labels: np.ndarray, scores: np.ndarray) -> str:
    """A GeoJSON FeatureCollection: one Polygon feature per outline, with its id, score and
    area (pixels of `labels`) as properties; `scores[i]` is instance i's. Its first member (a
    GeoJSON "foreign member", which readers ignore) names it as instseg's output, readable even
    in a file cut short."""
    areas = np.bincount(labels.ravel(), minlength=len(scores))
    features = [{"type": "Feature", "id": str(index),
                 "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 2).tolist()]},
                 "properties": {"objectType": "detection", "name": str(index), "id": index,
                                "score": round(float(scores[index]), 6), "area": int(areas[index]),
                                "measurements": {"score": round(float(scores[index]), 6)}}}  # QuPath's table
                for index, ring in traced]
    return json.dumps({OUTPUT_KEY: "geojson", "type": "FeatureCollection", "features": features}) + "\n"


def annotation_output_kind(path: str | os.PathLike) -> str | None:
    """Which of instseg's outline files a file is ("rois", "geojson"), None for any other file."""
    try:
        if str(path).lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                return "rois" if archive.comment == ROIS_COMMENT else None
        with open(path, "rb") as handle:
            return "geojson" if handle.read(len(GEOJSON_START)) == GEOJSON_START else None
    except (OSError, zipfile.BadZipFile):
        return None
