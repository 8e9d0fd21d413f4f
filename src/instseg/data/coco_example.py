"""A generated COCO dataset, shaped like an annotation tool's export, for the worked example of
docs/coco.md and the tests:

    python -m instseg.data.coco_example coco-demo     # coco-demo/annotations.json, coco-demo/images/

Each image holds a few overlapping ellipses ("cells", two categories) on a noisy background,
drawn larger first, as the decoder resolves overlaps. Most cells are polygons; in every third
image one is compressed RLE and one uncompressed RLE (as CVAT writes masks); every fourth
image has a crowd region (a cluster of specks, `iscrowd: 1`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from instseg.io.atomic import atomic_write_text
from instseg.io.writing import write_image

VERTICES = 24


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, angle: float) -> list[float]:
    t = np.linspace(0, 2 * np.pi, VERTICES, endpoint=False)
    x = cx + rx * np.cos(t) * np.cos(angle) - ry * np.sin(t) * np.sin(angle)
    y = cy + rx * np.cos(t) * np.sin(angle) + ry * np.sin(t) * np.cos(angle)
    return [round(float(v), 2) for xy in zip(x, y) for v in xy]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with a 0-run."""
    flat = mask.ravel(order="F").astype(np.uint8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def _polygon_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([polygon], height, width)[0]).astype(bool)


def _cells(rng: np.random.Generator, height: int, width: int) -> list[list[float]]:
    cells = []
    for _ in range(int(rng.integers(3, 7))):
        rx, ry = rng.uniform(0.08, 0.18, 2) * min(height, width)
        cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
        cells.append(ellipse_polygon(cx, cy, rx, ry, float(rng.uniform(0, np.pi))))
    return sorted(cells, key=lambda p: -float(mask_utils.area(mask_utils.frPyObjects([p], height, width)[0])))


def _annotation(number: int, polygon: list[float], image_id: int, category: int, height: int, width: int) -> dict:
    """A cell annotated as a polygon, or (every third image) as compressed / uncompressed RLE."""
    segmentation: list | dict = [polygon]
    if image_id % 3 == 0 and number % 3 == 1:
        rle = mask_utils.encode(np.asfortranarray(_polygon_mask(polygon, height, width).astype(np.uint8)))
        segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    elif image_id % 3 == 0 and number % 3 == 2:
        segmentation = uncompressed_rle(_polygon_mask(polygon, height, width))
    rle = mask_utils.frPyObjects([polygon], height, width)[0]
    return {"image_id": image_id, "category_id": category, "segmentation": segmentation, "iscrowd": 0,
            "area": float(mask_utils.area(rle)), "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)]}


def _crowd(rng: np.random.Generator, draw: ImageDraw.ImageDraw, image_id: int, height: int, width: int) -> dict:
    """A cluster of specks in a corner, annotated as one crowd region."""
    mask = Image.new("L", (width, height))
    speck = ImageDraw.Draw(mask)
    for _ in range(12):
        x, y = rng.uniform(2, width * 0.25), rng.uniform(2, height * 0.25)
        for canvas, fill in ((draw, (240, 200, 90)), (speck, 1)):
            canvas.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=fill)
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"image_id": image_id, "category_id": 1, "iscrowd": 1, "area": float(mask_utils.area(rle)),
            "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)]}


def write_coco_example(root: str | Path, n: int = 16, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Write n images to root/images/ and their annotations to root/annotations.json."""
    root = Path(root)
    height, width = size
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, n + 1):
        noise = rng.normal(0, 10, (height, width, 3))
        canvas = Image.fromarray(np.clip(np.array([70, 60, 80]) + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for number, polygon in enumerate(_cells(rng, height, width)):
            category = 1 + number % 2
            shade = rng.uniform(0.8, 1.0) * np.array([90, 200, 120] if category == 1 else [200, 120, 200])
            draw.polygon(list(zip(polygon[::2], polygon[1::2])), fill=tuple(int(c) for c in shade),
                         outline=(30, 30, 30))
            annotations.append(_annotation(number, polygon, image_id, category, height, width))
        if image_id % 4 == 0:
            annotations.append(_crowd(rng, draw, image_id, height, width))
        name = f"cells{image_id:03d}.png"
        write_image(root / "images" / name, canvas)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
    data = {"images": images, "categories": [{"id": 1, "name": "round"}, {"id": 2, "name": "oval"}],
            "annotations": [{"id": number, **ann} for number, ann in enumerate(annotations, start=1)]}
    atomic_write_text(root / "annotations.json", json.dumps(data))
    return root / "annotations.json"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m instseg.data.coco_example FOLDER")
    print(write_coco_example(sys.argv[1]))
