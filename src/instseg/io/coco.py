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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instseg.errors import DataError
from instseg.instances.postprocess import relabel_sequential
from instseg.io.images import display_path
from instseg.metrics.scores import IGNORE

BOX_SLACK = 1.0  # pixels a box may reach past the image border (exports round coordinates)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    """A COCO instances file: its valid images and annotations, and one line per problem."""

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
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DataError(f"{self.problems[0]}{more}; run `instseg data check coco:{self.path}` for the full list")
        return self


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise DataError(f"{display_path(path)}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{display_path(path)}: not valid JSON ({exc})") from exc


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
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, entry in enumerate(data["images"]):
        image = _image(entry, index, shown, coco.problems)
        if image is None:
            continue
        if image.id in ids:
            coco.problems.append(f"{shown}: images[{index}] repeats image id {image.id} of images[{ids[image.id]}]")
            continue
        if image.file_name in names:
            coco.problems.append(f"{shown}: images[{index}] repeats file_name '{image.file_name}' of "
                                 f"images[{names[image.file_name]}]")
        ids[image.id], names[image.file_name] = index, index
        coco.images.append(image)
    _read_annotations(coco, annotations, shown)
    return coco


def _categories(entries: Any, shown: str) -> dict[int, str]:
    if not isinstance(entries, list):
        raise DataError(f"{shown}: 'categories' is not a list")
    return {entry["id"]: str(entry.get("name", entry["id"])) for entry in entries
            if isinstance(entry, dict) and _is_int(entry.get("id"))}


def _image(entry: Any, index: int, shown: str, problems: list[str]) -> CocoImage | None:
    if not isinstance(entry, dict) or not _is_int(entry.get("id")) or not isinstance(entry.get("file_name"), str) \
            or not entry["file_name"]:
        problems.append(f"{shown}: images[{index}] needs an integer 'id' and a 'file_name'")
        return None
    height, width = entry.get("height"), entry.get("width")
    if (height is not None or width is not None) and not (_is_int(height) and _is_int(width)
                                                          and height > 0 and width > 0):
        problems.append(f"{shown}: image {entry['id']} has width {width!r} and height {height!r}; "
                        "give positive whole numbers, or neither")
        return None
    return CocoImage(entry["id"], entry["file_name"], height, width)


def _read_annotations(coco: CocoFile, annotations: list, shown: str) -> None:
    images = {image.id: image for image in coco.images}
    seen: set[int] = set()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            coco.problems.append(f"{shown}: annotations[{index}] needs an integer 'id'")
            continue
        where = f"{shown}: annotation {ann['id']}"
        if ann["id"] in seen:
            coco.problems.append(f"{where}: duplicate annotation id")
            continue
        seen.add(ann["id"])
        image = images.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
        if image is None:
            coco.problems.append(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
            continue
        where += f" (image {image.id}, {image.file_name})"
        problem = annotation_problem(ann, image, coco.categories)
        if problem is not None:
            coco.problems.append(f"{where}: {problem}")
            continue
        if not has_mask(ann) and not ann.get("iscrowd"):
            coco.warnings.append(f"{where}: no segmentation, only a box: the box is ignored in the loss and metrics")
        coco.annotations.setdefault(image.id, []).append(ann)


def has_mask(ann: dict) -> bool:
    segmentation = ann.get("segmentation")
    return bool(segmentation) and segmentation != [[]]


def is_ignored(ann: dict) -> bool:
    """Crowd regions and box-only annotations: IGNORE pixels, not instances."""
    return bool(ann.get("iscrowd", 0)) or not has_mask(ann)


def annotation_problem(ann: dict, image: CocoImage, categories: dict[int, str]) -> str | None:
    """Why an annotation cannot be decoded against its image, or None."""
    if categories and ann.get("category_id") not in categories:
        return f"category_id {ann.get('category_id')!r} is not in 'categories'"
    if ann.get("iscrowd", 0) not in (0, 1):
        return f"iscrowd is {ann['iscrowd']!r}, not 0 or 1"
    bbox = ann.get("bbox")
    if bbox is not None:
        problem = _bbox_problem(bbox, image)
        if problem is not None:
            return problem
    if has_mask(ann):
        return _segmentation_problem(ann["segmentation"], image)
    if bbox is None:
        return "neither a segmentation nor a bbox"
    return None


def _bbox_problem(bbox: Any, image: CocoImage) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {bbox} has a negative size"
    if image.width is not None and (x < -BOX_SLACK or y < -BOX_SLACK or x + w > image.width + BOX_SLACK
                                    or y + h > image.height + BOX_SLACK):
        return f"bbox {bbox} lies outside the {image.width}x{image.height} image"
    return None


def _segmentation_problem(segmentation: Any, image: CocoImage) -> str | None:
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(_is_number(v) for v in polygon)):
                return "a polygon must be a list of at least 3 x, y pairs"
        return None
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        return "segmentation is neither polygons nor RLE ({'size', 'counts'})"
    size, counts = segmentation.get("size"), segmentation["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if image.height is not None and size != [image.height, image.width]:
        return f"RLE size {size} differs from the image's [{image.height}, {image.width}] (height, width)"
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
            return "uncompressed RLE counts must be whole numbers that add up to height x width"
        return None
    return None if isinstance(counts, str) and counts else "RLE counts must be a list or a non-empty string"


def mask_api():
    """pycocotools' mask API, imported when first needed: the predict / infer path that writes no
    COCO file and reads none (it only knows `CocoLabels` by name) never loads it."""
    from pycocotools import mask

    return mask


def annotation_rle(ann: dict, height: int, width: int) -> dict:
    """The annotation's mask as one compressed RLE (a box-only annotation: its box)."""
    mask_utils = mask_api()
    if not has_mask(ann):
        return mask_utils.frPyObjects(np.array([ann["bbox"]], np.float64), height, width)[0]
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def annotation_mask(ann: dict, height: int, width: int, where: str) -> np.ndarray:
    try:
        return mask_api().decode(annotation_rle(ann, height, width)).astype(bool)
    except (ValueError, TypeError, OverflowError) as exc:  # pycocotools' words for a broken RLE string
        raise DataError(f"{where}: annotation {ann['id']}: cannot decode its segmentation ({exc})") from exc


@dataclass
class Decoded:
    labels: np.ndarray  # H x W int64: 1..N instances, 0 background, IGNORE
    overlaps: list[tuple[int, int, int]] = field(default_factory=list)  # (kept id, lost id, pixels)
    dropped: list[int] = field(default_factory=list)  # annotation ids covered entirely
    empty: list[int] = field(default_factory=list)  # annotation ids whose mask has no pixel


def decode_image(labels: CocoLabels, size: tuple[int, int]) -> Decoded:
    """Paint one image's annotations into a label map by the module's rules."""
    image, (height, width) = labels.image, size
    if image.height is not None and (image.height, image.width) != (height, width):
        raise DataError(f"{labels.where}: the JSON says {image.width}x{image.height} but the image file is "
                        f"{width}x{height} (width x height)")
    painted = np.zeros((height, width), np.int64)
    instances = []
    for ann in labels.annotations:
        mask = annotation_mask(ann, height, width, labels.where)
        if is_ignored(ann):
            painted[mask] = IGNORE
        else:
            instances.append((ann, mask, int(mask.sum())))
    decoded = Decoded(painted)
    owners = {}  # painted value -> annotation id
    instances.sort(key=lambda item: (-item[2], item[0]["id"]))
    for value, (ann, mask, area) in enumerate(instances, start=1):
        if area == 0:
            decoded.empty.append(ann["id"])
            continue
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
        for ann in coco.annotations.get(image.id, []):
            rle = annotation_rle(ann, height, width)
            annotations.append({"id": ann["id"], "image_id": image.id, "category_id": ann.get("category_id", 1),
                                "segmentation": rle, "area": float(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(is_ignored(ann))})
    categories = [{"id": key, "name": name} for key, name in coco.categories.items()] or [{"id": 1, "name": "object"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def decoding_warnings(labels: CocoLabels, decoded: Decoded, listed: int = 5) -> list[str]:
    """What decoding one image changed, one line each: overlaps (and who kept the pixels),
    instances covered entirely, masks with no pixel."""
    lines = []
    if decoded.overlaps:
        pairs = ", ".join(f"{kept} over {lost} ({pixels} px)" for kept, lost, pixels in decoded.overlaps[:listed])
        more = f", and {len(decoded.overlaps) - listed} more" if len(decoded.overlaps) > listed else ""
        lines.append(f"{labels.where}: {len(decoded.overlaps)} overlapping annotation pair(s), the smaller keeps "
                     f"the pixels: {pairs}{more}")
    lines += [f"{labels.where}: annotation {ann_id} is covered entirely by smaller ones: dropped"
              for ann_id in decoded.dropped]
    lines += [f"{labels.where}: annotation {ann_id} has an empty mask: skipped" for ann_id in decoded.empty]
    return lines
