"""Pictures where people would rather look than read (numpy + Pillow only, no torch).

Label colors, overlays with instance boundaries, titled panels (input / prediction / ground
truth), an embedding picture (its first three principal components as RGB) and the
training curves from `metrics.jsonl`. Charts are drawn with Pillow rather than matplotlib:
a few lines and labels do not justify a heavy dependency, and the ONNX path can draw too.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from instseg.errors import DataError
from instseg.instances.postprocess import neighbour_views
from instseg.metrics.scores import IGNORE

GOLDEN_RATIO_CONJUGATE = 0.618033988749895
BOUNDARY_RGB = (255, 255, 255)
BACKGROUND_RGB = (0, 0, 0)
IGNORE_RGB = (96, 96, 96)  # ground truth left out of loss and metrics (COCO crowd regions)
SERIES_RGB = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
              (140, 86, 75), (227, 119, 194), (127, 127, 127))


def label_colors(n: int) -> np.ndarray:
    """(n + 1) x 3 uint8 colors: black for 0, then hues a golden angle apart so that
    consecutive ids differ strongly; saturation and value alternate to tell near hues apart."""
    colors = np.zeros((n + 1, 3), dtype=np.uint8)
    for i in range(1, n + 1):
        hue = (i * GOLDEN_RATIO_CONJUGATE) % 1.0
        saturation = (0.95, 0.65, 0.8)[i % 3]
        value = (1.0, 0.85)[(i // 3) % 2]
        colors[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255)
    return colors


PALETTE_SIZE = 12  # colors that neighbouring instances choose from (then more, only if needed)
NEIGHBOUR_REACH = 3  # instances closer than this many pixels count as neighbours for colors


def boundaries(labels: np.ndarray) -> np.ndarray:
    """H x W bool, one pixel wide: instance pixels with a 4-neighbour of background, and where
    two instances touch, the pixels of the larger id only (so hundreds of small nuclei keep
    their insides visible)."""
    edge = np.zeros(labels.shape, dtype=bool)
    for (here, there), (edge_here, _) in zip(neighbour_views(labels), neighbour_views(edge)):
        edge_here |= (here > 0) & (here != there) & ((there == 0) | (here > there))
    return edge


def neighbours(labels: np.ndarray, reach: int = NEIGHBOUR_REACH) -> np.ndarray:
    """K x 2 unique id pairs (a < b) of instances within `reach` pixels of each other. Pairs are
    made unique as one integer each, per offset: a ragged map touches millions of times."""
    span = int(labels.max(initial=0)) + 1
    found = [np.zeros(0, dtype=np.int64)]
    h, w = labels.shape
    for dy in range(reach + 1):
        for dx in range(-reach, reach + 1):
            if (dy, dx) <= (0, 0) or dy >= h or abs(dx) >= w:
                continue
            a = labels[:h - dy, max(0, -dx):w - max(0, dx)]
            b = labels[dy:, max(0, dx):w + min(0, dx)]
            touch = (a != b) & (a > 0) & (b > 0)
            here, there = a[touch].astype(np.int64), b[touch].astype(np.int64)
            found.append(np.unique(np.minimum(here, there) * span + np.maximum(here, there)))
    pairs = np.unique(np.concatenate(found))
    return np.stack([pairs // span, pairs % span], 1)


BAND_PIXELS = 2**20  # full-size pictures are drawn this many pixels at a time: temporaries of a few MB


def band_rows(labels: np.ndarray) -> int:
    """Rows per band of `labels` that hold about BAND_PIXELS pixels."""
    return max(1, BAND_PIXELS // max(1, labels.shape[1]))


def banded_neighbours(labels: np.ndarray, reach: int = NEIGHBOUR_REACH) -> np.ndarray:
    """`neighbours(labels, reach)` found band by band (each band with the `reach` rows below
    it), so an 88 Mpx map needs a few MB of temporaries rather than several copies of itself."""
    rows = band_rows(labels)
    found = [neighbours(labels[y:y + rows + reach], reach) for y in range(0, labels.shape[0], rows)]
    return np.unique(np.concatenate(found), axis=0)


def instance_colors(labels: np.ndarray) -> np.ndarray:
    """(max id + 1) x 3 uint8 colors where instances within a few pixels never share a color:
    greedy coloring of the neighbour graph from a small palette of well-separated hues, each id
    starting its search at its own place in the palette so that the colors stay varied."""
    n = int(labels.max(initial=0))
    adjacent: list[list[int]] = [[] for _ in range(n + 1)]
    for a, b in banded_neighbours(labels).tolist():
        adjacent[b].append(a)  # only earlier ids have a color when b chooses
    choice = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        taken = {int(choice[j]) for j in adjacent[i]}
        start = (i - 1) % PALETTE_SIZE
        choice[i] = next(c for c in [*((start + k) % PALETTE_SIZE + 1 for k in range(PALETTE_SIZE)),
                                     *range(PALETTE_SIZE + 1, PALETTE_SIZE + len(taken) + 2)] if c not in taken)
    return label_colors(int(choice.max(initial=0)))[choice]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """H x W x 3 float in [0, 1] (or uint8 already) -> uint8."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def colorize(labels: np.ndarray, outline: bool = True) -> np.ndarray:
    """An instance label map as colors on black (neighbours differ), boundaries in white, IGNORE pixels grey."""
    rgb = instance_colors(labels)[np.clip(labels, 0, None)]
    rgb[labels == IGNORE] = IGNORE_RGB
    if outline:
        rgb[boundaries(labels)] = BOUNDARY_RGB
    return rgb


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Instances tinted over the image with their boundaries drawn: H x W x 3 uint8. Drawn in
    bands of rows: beyond the result, memory stays at a few MB whatever the image's size
    (at once, an 88 Mpx photo took 3.4 GB of float copies)."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colors = instance_colors(labels)
    out = np.empty((*labels.shape, 3), dtype=np.uint8)
    height, rows = labels.shape[0], band_rows(labels)
    for y in range(0, height, rows):
        band = slice(y, y + rows)
        out[band] = _tinted(to_uint8(image[band]), colors[labels[band]], labels[band] > 0, alpha)
        above = max(0, y - 1)  # boundaries look one row beyond the band on each side
        edge = boundaries(labels[above:y + rows + 1])[y - above:y - above + min(rows, height - y)]
        out[band][edge] = BOUNDARY_RGB
    return out


def _tinted(base: np.ndarray, tint: np.ndarray, foreground: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 `base` with `tint` blended in at `alpha` where `foreground`."""
    base = base.astype(np.float32)
    blended = np.where(foreground[..., None], (1 - alpha) * base + alpha * tint.astype(np.float32), base)
    return np.round(blended).astype(np.uint8)


def embedding_rgb(embedding: np.ndarray, foreground: np.ndarray | None = None, max_points: int = 20000) -> np.ndarray:
    """D x H x W embedding -> H x W x 3 uint8: its first three principal components as RGB.

    Components are fitted on the foreground (where instances live) when a mask is given,
    and each is stretched between its 1st and 99th percentile; the background is dimmed.
    """
    d, h, w = embedding.shape
    pixels = embedding.reshape(d, -1).T.astype(np.float64)
    fit = pixels[foreground.ravel()] if foreground is not None and foreground.any() else pixels
    if len(fit) > max_points:
        fit = fit[np.random.default_rng(0).choice(len(fit), max_points, replace=False)]
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    components = np.zeros((3, d))
    components[: min(3, len(vt))] = vt[:3]
    projected = (pixels - mean) @ components.T
    reference = (fit - mean) @ components.T
    low, high = np.percentile(reference, 1, axis=0), np.percentile(reference, 99, axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-9), 0, 1).reshape(h, w, 3)
    if foreground is not None:
        scaled = np.where(foreground[..., None], scaled, scaled * 0.25)
    return to_uint8(scaled)


def _font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def titled(tile: np.ndarray, title: str, height: int = 18) -> np.ndarray:
    """A tile with a caption strip above it."""
    strip = Image.new("RGB", (tile.shape[1], height), (32, 32, 32))
    ImageDraw.Draw(strip).text((4, 2), title, fill=(240, 240, 240), font=_font(12))
    return np.concatenate([np.asarray(strip), tile], axis=0)


def _fit_height(tile: np.ndarray, height: int) -> np.ndarray:
    if tile.shape[0] == height:
        return tile
    width = max(1, round(tile.shape[1] * height / tile.shape[0]))
    return np.asarray(Image.fromarray(tile).resize((width, height), Image.NEAREST))


def panel(rows: Sequence[Sequence[tuple[str, np.ndarray]]], gap: int = 4) -> np.ndarray:
    """A grid of titled tiles (rows of (title, H x W x 3 uint8)); tiles scaled to one height."""
    if not rows or not all(rows):
        raise ValueError("a panel needs at least one tile per row")
    height = rows[0][0][1].shape[0]
    rendered = []
    for row in rows:
        tiles = [titled(_fit_height(to_uint8(tile), height), title) for title, tile in row]
        spacer = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
        parts = [part for tile in tiles for part in (tile, spacer)][:-1]
        rendered.append(np.concatenate(parts, axis=1))
    width = max(r.shape[1] for r in rendered)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rendered]
    return np.concatenate(padded, axis=0)[:-gap]


# -- charts --------------------------------------------------------------------------


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], title: str, *, log_y: bool = False,
               y_range: tuple[float, float] | None = None, size: tuple[int, int] = (480, 320)) -> np.ndarray:
    """A line chart of named (x, y) series as H x W x 3 uint8; non-finite points are skipped
    (and non-positive ones on a log axis)."""
    width, height = size
    left, right, top, bottom = 56, 12, 28, 34
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(11)
    draw.text((left, 6), title, fill=(0, 0, 0), font=_font(13))
    clean = {name: [(x, y) for x, y in points if math.isfinite(y) and (y > 0 or not log_y)]
             for name, points in series.items()}
    xs = [x for points in clean.values() for x, _ in points]
    ys = [(math.log10(y) if log_y else y) for points in clean.values() for _, y in points]
    if not xs:
        draw.text((left, height // 2), "no data yet", fill=(120, 120, 120), font=font)
        return np.asarray(image)
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = y_range if y_range is not None else (min(ys), max(ys))
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def at(x: float, y: float) -> tuple[float, float]:
        v = math.log10(y) if log_y else y
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for tick in _nice_ticks(y0, y1):
        y = at(x0, 10 ** tick if log_y else tick)[1]
        draw.line([left - 4, y, width - right, y], fill=(225, 225, 225))
        text = f"{10 ** tick:.3g}" if log_y else f"{tick:.3g}"
        draw.text((4, y - 6), text, fill=(0, 0, 0), font=font)
    for tick in _nice_ticks(x0, x1, 6):
        if abs(tick - round(tick)) > 1e-9:
            continue  # epochs are whole numbers
        x = at(tick, 10 ** y0 if log_y else y0)[0]
        draw.line([x, height - bottom, x, height - bottom + 4], fill=(0, 0, 0))
        draw.text((x - 4, height - bottom + 6), f"{tick:g}", fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 14, height - 14), "epoch", fill=(0, 0, 0), font=font)
    for i, (name, points) in enumerate(clean.items()):
        color = SERIES_RGB[i % len(SERIES_RGB)]
        xy = [at(x, y) for x, y in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for px, py in xy:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
    draw.rectangle([width - right - 114, top + 2, width - right - 2, top + 10 + 14 * len(clean)],
                   fill=(255, 255, 255), outline=(200, 200, 200))  # the legend stays readable over lines
    for i, name in enumerate(clean):
        color = SERIES_RGB[i % len(SERIES_RGB)]
        ly = top + 6 + 14 * i
        draw.line([width - right - 110, ly + 6, width - right - 92, ly + 6], fill=color, width=3)
        draw.text((width - right - 88, ly), name, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (one JSON object per epoch)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
    return records


def training_curves(records: Sequence[Mapping]) -> np.ndarray:
    """Loss terms (log scale) beside validation SBD / FG Dice, from metrics.jsonl records."""
    losses: dict[str, list[tuple[float, float]]] = {}
    scores: dict[str, list[tuple[float, float]]] = {"SBD": [], "FG Dice": []}
    for record in records:
        epoch = float(record["epoch"])
        for term, value in record.get("train", {}).items():
            losses.setdefault(term, []).append((epoch, float(value)))
        val = record.get("val", {})
        for key, name in (("sbd", "SBD"), ("fg_dice", "FG Dice")):
            if key in val:
                scores[name].append((epoch, float(val[key])))
    left = line_chart(losses, "training loss terms", log_y=True)
    right = line_chart(scores, "validation", y_range=(0.0, 1.0))
    return np.concatenate([left, right], axis=1)
