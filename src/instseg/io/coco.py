"""COCO instance annotations in: a JSON file checked entry by entry, and each image's
annotations decoded (pycocotools: polygons, compressed and uncompressed RLE) into the
instance label map every dataset item carries.

Decoding rules, the same for training, evaluation and `instseg data check`:

- crowd regions (`iscrowd: 1`) and annotations with a box but no mask (`segmentation: []`,
  as Label Studio writes rectangles) become IGNORE pixels, left out of the loss and the
  metrics (COCO ignores crowd regions the same way);
- instances are painted largest first, so where two overlap the smaller one keeps the pixels
  (equal areas: the later annotation id); an instance covered entirely is dropped. Both are
  reported by `instseg data check`;
- every category is foreground: the semantic head learns foreground vs background.

Export quirks are read as they come: 0- or 1-based ids, a missing `iscrowd` (taken as 0),
`segmentation` as an empty list, images given without width and height.

Nothing reaches pycocotools' C code unchecked (`coco_geometry`: it trusts its input), and an
image the JSON sizes beyond Pillow's decompression-bomb limit is refused as such a file is.
Problems and warnings are one line each, but past KEEP of a kind one line counts the rest.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from instseg.errors import DataError
from instseg.instances.postprocess import relabel_sequential
from instseg.io.coco_geometry import geometry_problem, has_mask, short
from instseg.limits import is_int
from instseg.io.images import display_path, over_decode_limit
from instseg.metrics.scores import IGNORE

KEEP = 3  # lines of one kind a report lists in full; the rest are counted (`Findings`)
ANNOTATION_KEYS = ("id", "image_id", "category_id", "iscrowd", "bbox", "segmentation")  # what decoding reads


class More(str):
    """The line that stands for `count` more lines of the kind listed above it."""

    count: int
    where: str

    def __new__(cls, count: int, where: str) -> More:
        line = super().__new__(cls, f"... and {count} more like this in {where}")
        line.count, line.where = count, where
        return line

    def __getnewargs__(self) -> tuple[int, str]:  # copies (dataclasses.asdict) and pickles rebuild it
        return self.count, self.where


def line_count(lines: Iterable[str]) -> int:
    """How many findings `lines` report: a `More` line counts for the lines it stands for."""
    return sum(line.count if isinstance(line, More) else 1 for line in lines)


class Findings:
    """One-line messages about one file, by kind: the first KEEP of a kind in full, the rest counted,
    so a file with a million bad entries is reported in a few lines (and held in a few strings)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._kept: dict[str, list[str]] = {}
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, line: str) -> None:
        self._counts[kind] += 1
        kept = self._kept.setdefault(kind, [])
        if len(kept) < KEEP:
            kept.append(line)

    def lines(self) -> list[str]:
        """Kind by kind, in the order they first came: the kept lines, then a `More` for the rest."""
        lines: list[str] = []
        for kind, kept in self._kept.items():
            lines += kept
            if self._counts[kind] > len(kept):
                lines.append(More(self._counts[kind] - len(kept), self.where))
        return lines


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int | None  # None: not in the JSON (read from the image file)
    width: int | None


@dataclass(frozen=True)
class CocoLabels:
    """One image's annotations: what a COCO dataset sample holds in place of a label file."""

    source: Path  # the JSON file
    image: CocoImage
    annotations: tuple[dict, ...]

    @property
    def where(self) -> str:
        return f"{display_path(self.source)}: image {self.image.id} ({display_path(self.image.file_name)})"

    def decode(self, size: tuple[int, int]) -> np.ndarray:
        """H x W int64 label map (1..N, 0 background, IGNORE) for an image of `size` (H, W)."""
        return decode_image(self, size).labels


@dataclass
class CocoFile:
    """A COCO instances file: its valid images and annotations, and one line per problem (`Findings`:
    beyond a few of a kind, one line counts the rest)."""

    path: Path
    images: list[CocoImage]
    annotations: dict[int, list[dict]]  # image id -> its valid annotations
    categories: dict[int, str]
    problems: list[str] = field(default_factory=list)  # unusable for training until fixed
    warnings: list[str] = field(default_factory=list)  # worth a look; training works

    def labels(self, image: CocoImage) -> CocoLabels:
        return CocoLabels(self.path, image, tuple(self.annotations.get(image.id, [])))

    def require_usable(self) -> CocoFile:
        """This file, or a DataError naming its first problem when it has any."""
        if self.problems:
            count = line_count(self.problems)
            more = f" (and {count - 1} more)" if count > 1 else ""
            raise DataError(f"{self.problems[0]}{more}; run `instseg data check coco:{self.path}` for the full list")
        return self


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise DataError(f"{display_path(path)}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{display_path(path)}: not valid JSON ({exc})") from exc
    except RecursionError as exc:  # Python's reader recurses once per nesting level
        raise DataError(f"{display_path(path)}: not a COCO file: nested deeper than the JSON reader can follow "
                        f"(about {sys.getrecursionlimit()} levels)") from exc


def load_coco(path: str | Path) -> CocoFile:
    """Read and check a COCO instances file; DataError only when it is not one at all."""
    path = Path(path)
    shown = display_path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{shown}: not a COCO instances file (no 'images' list)")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{shown}: 'annotations' is not a list")
    coco = CocoFile(path, [], {}, _categories(data.get("categories", []), shown))
    problems, warnings = Findings(shown), Findings(shown)
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, entry in enumerate(data["images"]):
        image = _image(entry, index, shown, problems)
        if image is None:
            continue
        if image.id in ids:
            problems.add("image id", f"{shown}: images[{index}] repeats image id {image.id} of images[{ids[image.id]}]")
            continue
        if image.file_name in names:
            problems.add("file_name", f"{shown}: images[{index}] repeats file_name '{display_path(image.file_name)}' "
                                      f"of images[{names[image.file_name]}]")
        ids[image.id], names[image.file_name] = index, index
        coco.images.append(image)
    _read_annotations(coco, annotations, shown, problems, warnings)
    coco.problems, coco.warnings = problems.lines(), warnings.lines()
    return coco


def _categories(entries: Any, shown: str) -> dict[int, str]:
    if not isinstance(entries, list):
        raise DataError(f"{shown}: 'categories' is not a list")
    return {entry["id"]: entry["name"] if isinstance(entry.get("name"), str) else str(entry["id"])
            for entry in entries if isinstance(entry, dict) and is_int(entry.get("id"))}


def _image(entry: Any, index: int, shown: str, problems: Findings) -> CocoImage | None:
    if not isinstance(entry, dict) or not is_int(entry.get("id")) or not isinstance(entry.get("file_name"), str) \
            or not entry["file_name"]:
        problems.add("image entry", f"{shown}: images[{index}] needs an integer 'id' and a 'file_name'")
        return None
    try:
        os.fsencode(entry["file_name"])
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no file has that name, and it cannot be printed
        problems.add("image entry", f"{shown}: images[{index}] file_name {short(entry['file_name'])} is not a "
                                    "valid file name (a lone UTF-16 surrogate)")
        return None
    height, width = entry.get("height"), entry.get("width")
    if (height is not None or width is not None) and not (is_int(height) and is_int(width)
                                                          and height > 0 and width > 0):
        problems.add("image size", f"{shown}: image {entry['id']} has width {short(width)} and height "
                                   f"{short(height)}; give positive whole numbers, or neither")
        return None
    if height is not None and over_decode_limit(height * width):
        problems.add("image size", f"{shown}: image {entry['id']} is {short(width)}x{short(height)} (width x "
                                   f"height), more than the {Image.MAX_IMAGE_PIXELS} pixels an image file may have")
        return None
    return CocoImage(entry["id"], entry["file_name"], height, width)


def _read_annotations(coco: CocoFile, annotations: list, shown: str, problems: Findings, warnings: Findings) -> None:
    images = {image.id: image for image in coco.images}
    seen: set[int] = set()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not is_int(ann.get("id")):
            problems.add("annotation id", f"{shown}: annotations[{index}] needs an integer 'id'")
            continue
        where = f"{shown}: annotation {ann['id']}"
        if ann["id"] in seen:
            problems.add("annotation id", f"{where}: duplicate annotation id")
            continue
        seen.add(ann["id"])
        image = images.get(ann.get("image_id")) if is_int(ann.get("image_id")) else None
        if image is None:
            problems.add("image_id", f"{where}: image_id {short(ann.get('image_id'))} is not in 'images'")
            continue
        where += f" (image {image.id}, {display_path(image.file_name)})"
        problem = annotation_problem(ann, image, coco.categories)
        if problem is not None:
            problems.add(problem[0], f"{where}: {problem[1]}")
            continue
        if not has_mask(ann) and not ann.get("iscrowd"):
            warnings.add("box only", f"{where}: no segmentation, only a box: the box is ignored in the loss and "
                                     "metrics")
        coco.annotations.setdefault(image.id, []).append(_kept(ann))


def _kept(ann: dict) -> dict:
    """The checked fields of an annotation, which decoding reads: an export's extra fields, however
    large or deeply nested, are not carried on (into data loader workers' pickles, say)."""
    kept = {key: ann[key] for key in ANNOTATION_KEYS if key in ann}
    if isinstance(kept.get("segmentation"), dict):
        kept["segmentation"] = {"size": kept["segmentation"]["size"], "counts": kept["segmentation"]["counts"]}
    return kept


def is_ignored(ann: dict) -> bool:
    """Crowd regions and box-only annotations: IGNORE pixels, not instances."""
    return bool(ann.get("iscrowd", 0)) or not has_mask(ann)


def annotation_problem(ann: dict, image: CocoImage, categories: dict[int, str]) -> tuple[str, str] | None:
    """(the field, why) an annotation cannot be decoded against its image, or None; its geometry
    is checked against the JSON's size when given, else only for its form (the size comes later)."""
    category = ann.get("category_id")
    if category is not None and not is_int(category):
        return "category_id", f"category_id {short(category)} is not an integer id"
    if categories and category not in categories:
        return "category_id", f"category_id {short(category)} is not in 'categories'"
    if ann.get("iscrowd", 0) not in (0, 1):
        return "iscrowd", f"iscrowd is {short(ann['iscrowd'])}, not 0 or 1"
    return geometry_problem(ann, image.height, image.width)


def mask_api():
    """pycocotools' mask API, imported when first needed: the predict / infer path that writes no
    COCO file and reads none (it only knows `CocoLabels` by name) never loads it."""
    from pycocotools import mask

    return mask


def annotation_rle(ann: dict, height: int, width: int, where: str) -> dict:
    """The annotation's mask as one compressed RLE (a box-only annotation: its box), its geometry
    checked against the image first (`where` names the image in the error): pycocotools trusts it."""
    problem = geometry_problem(ann, height, width)
    if problem is not None:
        raise DataError(f"{where}: annotation {ann['id']}: {problem[1]}")
    mask_utils = mask_api()
    if not has_mask(ann):
        return mask_utils.frPyObjects(np.array([ann["bbox"]], np.float64), height, width)[0]
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


@dataclass
class Decoded:
    labels: np.ndarray  # H x W int64: 1..N instances, 0 background, IGNORE
    overlaps: list[tuple[int, int, int]] = field(default_factory=list)  # (kept id, lost id, pixels)
    dropped: list[int] = field(default_factory=list)  # annotation ids covered entirely
    empty: list[int] = field(default_factory=list)  # annotation ids whose mask has no pixel


def decode_image(labels: CocoLabels, size: tuple[int, int]) -> Decoded:
    """Paint one image's annotations into a label map by the module's rules, one mask decoded at a
    time (areas come from the RLEs): memory is one label map and a mask, however many annotations."""
    image, (height, width) = labels.image, size
    if image.height is not None and (image.height, image.width) != (height, width):
        raise DataError(f"{labels.where}: the JSON says {image.width}x{image.height} but the image file is "
                        f"{width}x{height} (width x height)")
    mask_utils = mask_api()
    painted = np.zeros((height, width), np.int64)
    rles = [(ann, annotation_rle(ann, height, width, labels.where)) for ann in labels.annotations]
    instances = []
    for ann, rle in rles:
        if is_ignored(ann):
            painted[mask_utils.decode(rle).astype(bool)] = IGNORE
        else:
            instances.append((ann, rle, int(mask_utils.area(rle))))
    decoded = Decoded(painted)
    owners = {}  # painted value -> annotation id
    instances.sort(key=lambda item: (-item[2], item[0]["id"]))
    for value, (ann, rle, area) in enumerate(instances, start=1):
        if area == 0:
            decoded.empty.append(ann["id"])
            continue
        mask = mask_utils.decode(rle).astype(bool)
        below = painted[mask]
        under, pixels = np.unique(below[below > 0], return_counts=True)
        decoded.overlaps += [(ann["id"], owners[int(u)], int(n)) for u, n in zip(under, pixels)]
        painted[mask] = value
        owners[value] = ann["id"]
    present = np.zeros(len(instances) + 1, bool)
    present[np.unique(painted[painted > 0])] = True
    decoded.dropped = sorted(owners[v] for v in owners if not present[v])
    positive = painted > 0
    painted[positive] = relabel_sequential(np.where(positive, painted, 0))[positive]
    return decoded


def ground_truth_dataset(coco: CocoFile, sizes: dict[int, tuple[int, int]]) -> dict:
    """The file as pycocotools needs it: every image with its size (`sizes` fills those the JSON
    leaves out), every annotation with iscrowd, area and an RLE; box-only ones as crowd regions."""
    mask_utils = mask_api()
    images, annotations = [], []
    for image in coco.images:
        height, width = (image.height, image.width) if image.height is not None else sizes[image.id]
        images.append({"id": image.id, "file_name": image.file_name, "height": height, "width": width})
        where = coco.labels(image).where
        for ann in coco.annotations.get(image.id, []):
            rle = annotation_rle(ann, height, width, where)
            annotations.append({"id": ann["id"], "image_id": image.id, "category_id": ann.get("category_id", 1),
                                "segmentation": rle, "area": float(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(is_ignored(ann))})
    categories = [{"id": key, "name": name} for key, name in coco.categories.items()] or [{"id": 1, "name": "object"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def decoding_warnings(labels: CocoLabels, decoded: Decoded, listed: int = 5) -> list[str]:
    """What decoding one image changed, one line each (`Findings`: a few of a kind, then a count):
    overlaps (and who kept the pixels), instances covered entirely, masks with no pixel."""
    lines = Findings(labels.where)
    if decoded.overlaps:
        pairs = ", ".join(f"{kept} over {lost} ({pixels} px)" for kept, lost, pixels in decoded.overlaps[:listed])
        more = f", and {len(decoded.overlaps) - listed} more" if len(decoded.overlaps) > listed else ""
        lines.add("overlap", f"{labels.where}: {len(decoded.overlaps)} overlapping annotation pair(s), the smaller "
                             f"keeps the pixels: {pairs}{more}")
    for ann_id in decoded.dropped:
        lines.add("dropped", f"{labels.where}: annotation {ann_id} is covered entirely by smaller ones: dropped")
    for ann_id in decoded.empty:
        lines.add("empty", f"{labels.where}: annotation {ann_id} has an empty mask: skipped")
    return lines.lines()
