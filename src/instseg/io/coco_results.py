"""COCO results out and COCO mask AP in, through pycocotools.

The results file (`predict` / `infer --coco FILE`) is a COCO instances file: "images" (id,
file_name, width, height), "categories" and "annotations", each a compressed-RLE mask with its
area, bbox, `iscrowd: 0` and a `score`. CVAT imports it as "COCO 1.0" without edits; every
COCO reader loads it (`pycocotools.coco.COCO(path)`; its "annotations" list is what
`COCO.loadRes` takes); `instseg evaluate --coco-gt ANN.json --pred FILE` scores it.

The instance score is the mean foreground probability (softmax of the semantic head) over the
instance's pixels at the original resolution: a mask the network is sure of scores near 1.

COCO mask AP is class-agnostic here (`useCats = 0`): the model predicts foreground, not a class.
Up to 100 detections per image count, as in COCO, raised to the largest instance count seen so
that crowded images are scored in full (`max_dets` in metrics.json).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instseg.errors import DataError
from instseg.io.atomic import atomic_write_text
from instseg.io.coco import CocoFile, ground_truth_dataset, load_coco, mask_api, read_json
from instseg.io.coco_geometry import geometry_problem
from instseg.io.images import display_path, resize_image
from instseg.io.inputs import match_key
from instseg.metrics.reports import ImageRow, Report
from instseg.metrics.scores import IGNORE, count_instances, score_image

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from instseg.predict.pipeline import Prediction

# pycocotools is imported by the functions that use it (`mask_api()`, COCO, COCOeval): `predict` and
# `infer` import this module for `--coco` and load pycocotools only when a COCO file is written or read.

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6]
AP_LABELS = {"AP": "COCO mask AP", "AP50": "COCO AP50", "AP75": "COCO AP75",
             "APs": "COCO AP small", "APm": "COCO AP medium", "APl": "COCO AP large"}
DEFAULT_CATEGORY = {"id": 1, "name": "object", "supercategory": ""}


def instance_scores(labels: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """scores[i]: the mean of `probability` (resized to the label map) over instance i's pixels."""
    if probability.shape != labels.shape:
        probability = resize_image(probability[..., None].astype(np.float32), labels.shape)[..., 0]
    flat = np.clip(labels.ravel(), 0, None)
    pixels = np.bincount(flat)
    return np.bincount(flat, weights=probability.ravel().astype(np.float64)) / np.maximum(pixels, 1)


def _rle(mask: np.ndarray) -> dict:
    return mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))


def mask_annotations(labels: np.ndarray, image_id: int, category_id: int,
                     scores: np.ndarray | None = None) -> list[dict]:
    """One annotation per instance of a label map (JSON-ready compressed RLE); with `scores`,
    detections, without, ground truth (IGNORE pixels become one crowd region)."""
    mask_utils = mask_api()
    entries = []
    ids = [i for i in np.unique(labels) if i > 0] + ([IGNORE] if scores is None and (labels == IGNORE).any() else [])
    for i in ids:
        rle = _rle(labels == i)
        entry = {"image_id": image_id, "category_id": category_id,
                 "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                 "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                 "iscrowd": int(i == IGNORE)}
        if scores is not None:
            entry["score"] = round(float(scores[i]), 6)
        entries.append(entry)
    return entries


def numbered(annotations: list[dict], first: int = 1) -> list[dict]:
    return [{"id": first + n, **ann} for n, ann in enumerate(annotations)]


def results_category(gt: CocoFile | None) -> dict:
    """The one category predictions get: the ground truth's when it has exactly one."""
    if gt is not None and len(gt.categories) == 1:
        [(key, name)] = gt.categories.items()
        return {"id": key, "name": name, "supercategory": ""}
    return dict(DEFAULT_CATEGORY)


def read_detections(path: Path, gt: dict) -> tuple[list[dict], set[int] | None]:
    """Detections from a results file, and the ground-truth image ids it covers: a COCO results
    list (image ids taken as they are; it covers every image) or a COCO file with "images"
    (matched to the ground truth's by file name; it covers those)."""
    shown = display_path(path)
    data = read_json(path)
    covered = None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        by_key = {match_key(image["file_name"]): image["id"] for image in gt["images"]}
        ids = {image.get("id"): by_key.get(match_key(str(image.get("file_name", ""))))
               for image in data.get("images", []) if isinstance(image, dict)}
        missing = sorted(str(image.get("file_name")) for image in data.get("images", [])
                         if isinstance(image, dict) and ids.get(image.get("id")) is None)
        if missing:
            raise DataError(f"{shown}: {len(missing)} image(s) not in the ground truth by file name, "
                            f"e.g. {display_path(missing[0])}")
        covered = set(ids.values())
        data = [{**ann, "image_id": ids.get(ann.get("image_id"))} for ann in data["annotations"]
                if isinstance(ann, dict)]
    if not isinstance(data, list):
        raise DataError(f"{shown}: neither a COCO results list nor a COCO file with 'annotations'")
    return _checked_detections(data, gt, shown), covered


def _checked_detections(data: list, gt: dict, shown: str) -> list[dict]:
    mask_utils = mask_api()
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    detections = []
    for index, det in enumerate(data):
        if not (isinstance(det, dict) and det.get("image_id") in sizes and isinstance(det.get("score"), (int, float))
                and isinstance(det.get("segmentation"), (dict, list)) and det["segmentation"]):
            raise DataError(f"{shown}: detection {index} needs an image_id of the ground truth, a score and a "
                            "segmentation")
        height, width = sizes[det["image_id"]]
        segmentation = det["segmentation"]
        problem = geometry_problem({"segmentation": segmentation}, height, width)  # pycocotools trusts its input
        if problem is not None:
            raise DataError(f"{shown}: detection {index}: {problem[1]}")
        rle = (mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)) if isinstance(segmentation, list)
               else mask_utils.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list)
               else segmentation)
        detections.append({"image_id": det["image_id"], "category_id": det.get("category_id", 1), "segmentation": rle,
                           "score": float(det["score"]), "area": float(mask_utils.area(rle)),
                           "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return numbered(detections)


def _index(dataset: dict) -> COCO:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def coco_ap(gt: dict, detections: list[dict]) -> dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl (None where the ground truth has no instance of that size)
    of numbered detections against a ground-truth dataset, class-agnostic."""
    per_image: dict[int, int] = {}
    for ann in gt["annotations"] + detections:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    max_dets = max([100, *per_image.values()])
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout
        results = _index({"images": gt["images"], "categories": gt["categories"], "annotations": detections})
        evaluation = COCOeval(_index(gt), results, "segm")
        evaluation.params.useCats = 0
        evaluation.params.maxDets = [1, 10, max_dets]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    summary = {name: (float(value) if value >= 0 else None) for name, value in zip(AP_NAMES, evaluation.stats)}
    return {**summary, "max_dets": max_dets, "images": len(gt["images"]), "detections": len(detections)}


class LabelMapCoco:
    """Ground truth and scored predictions gathered as label maps, image by image, for `coco_ap`."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.truth: list[dict] = []
        self.detections: list[dict] = []

    def add(self, name: str, gt: np.ndarray, pred: np.ndarray, scores: np.ndarray) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": name, "height": gt.shape[0], "width": gt.shape[1]})
        self.truth += mask_annotations(gt, image_id, DEFAULT_CATEGORY["id"])
        self.detections += mask_annotations(pred, image_id, DEFAULT_CATEGORY["id"], scores)

    def summary(self) -> dict[str, Any]:
        gt = {"images": self.images, "categories": [DEFAULT_CATEGORY], "annotations": numbered(self.truth)}
        return coco_ap(gt, numbered(self.detections))


def paint_detections(detections: list[dict], size: tuple[int, int]) -> np.ndarray:
    """One image's detections as a label map: higher scores on top, ids 1..N by score."""
    labels = np.zeros(size, np.int64)
    ranked = sorted(detections, key=lambda det: -det["score"])
    for value, det in reversed(list(enumerate(ranked, start=1))):
        labels[mask_api().decode(det["segmentation"]).astype(bool)] = value
    return labels


class ResultsFile:
    """The results file of `predict` / `infer --coco`: filled prediction by prediction, written
    once at the end. With ground truth (a COCO file), images get its ids and file names,
    matched by file name (`inputs.match_key`); otherwise ids 1..N in input order."""

    def __init__(self, path: Path, gt: CocoFile | None = None, overwrite: bool = False) -> None:
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise DataError(f"{path}: exists and this run did not write it, so it is not replaced "
                            "(pass --overwrite, or choose another --coco file)")
        self.path = path
        self.known = {match_key(image.file_name): image for image in gt.images} if gt is not None else {}
        self.first_new_id = max((image.id for image in gt.images), default=0) + 1 if gt is not None else 1
        self.category = results_category(gt)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.unmatched: list[str] = []  # inputs the ground truth does not name

    def add(self, prediction: Prediction) -> None:
        image = self.known.get(match_key(prediction.path))
        if image is None and self.known:
            self.unmatched.append(prediction.path.name)
        image_id = image.id if image is not None else self.first_new_id + prediction.index
        height, width = prediction.labels.shape
        self.images.append({"id": image_id, "file_name": image.file_name if image is not None else prediction.path.name,
                            "height": height, "width": width})
        scores = instance_scores(prediction.labels, prediction.probability)
        self.annotations += mask_annotations(prediction.labels, image_id, self.category["id"], scores)

    def write(self) -> None:
        results = {"images": sorted(self.images, key=lambda image: image["id"]), "categories": [self.category],
                   "annotations": numbered(self.annotations)}
        atomic_write_text(self.path, json.dumps(results, separators=(",", ":")))  # an OutputError names it


def score_coco_files(gt_path: Path, pred_path: Path) -> Report:
    """A results file against COCO ground truth: COCO mask AP, and the per-image CVPPP / DSB2018
    scores of the label maps both decode to (detections painted higher score on top)."""
    coco = load_coco(gt_path).require_usable()
    unsized = [image.file_name for image in coco.images if image.height is None]
    if unsized:
        raise DataError(f"{display_path(gt_path)}: image {display_path(unsized[0])} has no width and height, which "
                        "scoring needs")
    gt = ground_truth_dataset(coco, {})
    detections, covered = read_detections(pred_path, gt)
    if covered is not None:
        gt = {**gt, "images": [image for image in gt["images"] if image["id"] in covered],
              "annotations": [ann for ann in gt["annotations"] if ann["image_id"] in covered]}
    by_image: dict[int, list[dict]] = {}
    for det in detections:
        by_image.setdefault(det["image_id"], []).append(det)
    rows = []
    for image in coco.images:
        if covered is None or image.id in covered:
            size = (image.height, image.width)
            truth = coco.labels(image).decode(size)
            pred = paint_detections(by_image.get(image.id, []), size)
            rows.append(ImageRow(image.file_name, score_image(pred, truth), count_instances(truth)))
    if not rows:
        raise DataError(f"{display_path(pred_path)}: covers no image of {display_path(gt_path)}")
    source = {"coco_gt": str(gt_path), "pred": str(pred_path)}
    return Report(f"{pred_path} against {gt_path} ({len(rows)} images)", rows, source, coco_ap(gt, detections))
