"""Hostile datasets, round two: COCO files crafted to exhaust memory or reach pycocotools' C code
with what it cannot take, names that lead out of the image folder, and data that `data check`
calls not usable. Each is refused by name, in one line, before anything large is allocated, and
`train` refuses what `data check` refuses, with the same line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from data_fixtures import cvppp, write_palette
from instseg import limits
from instseg.cli.main import app
from instseg.data.checks import check_dataset
from instseg.data.layouts import discover, parse_data_spec
from instseg.data.samples import read_sample
from instseg.errors import DataError
from instseg.io import coco as coco_io
from instseg.io.coco import load_coco
from instseg.io.coco_geometry import rle_string_runs
from instseg.io.writing import write_rgb
from training_support import subprocess_env

cli = CliRunner()
H, W = 24, 32
TINY = ["--model", "unet", "--width", "4", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
        "--device", "cpu"]
SQUARE = [2, 2, 12, 2, 12, 12, 2, 12]


def write_coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    """`root`/ann.json over one or two black H x W images (a.png, b.png), category 1."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        write_rgb(root / name, np.zeros((H, W, 3), np.uint8))
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                        {"id": 2, "file_name": "b.png", "height": H, "width": W}]
    anns = [{"id": n, "image_id": 1, "category_id": 1, "iscrowd": 0, **a} for n, a in enumerate(annotations, 1)]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "cell"}],
                                "annotations": anns}))
    return path


def check_lines(spec: str) -> tuple[int, list[str]]:
    """`instseg data check`'s exit code and its stderr lines."""
    result = cli.invoke(app, ["data", "check", spec])
    return result.exit_code, result.stderr.splitlines()


def train(spec: str, out: Path):
    return cli.invoke(app, ["train", *TINY, "--data", spec, "--out", str(out), "--name", "run"])


class Spy:
    """pycocotools' mask API, recording the largest polygon coordinate it is handed."""

    def __init__(self) -> None:
        self.largest = 0.0

    def __getattr__(self, name):
        return getattr(mask_utils, name)

    def frPyObjects(self, objects, height, width):
        if isinstance(objects, list):
            self.largest = max([self.largest, *(abs(v) for polygon in objects for v in polygon)])
        return mask_utils.frPyObjects(objects, height, width)


# -- 1. geometry is checked before pycocotools sees it ----------------------------------------------


@pytest.mark.parametrize("sized", [True, False], ids=["json-size", "size-from-file"])
def test_a_polygon_far_outside_never_reaches_pycocotools(tmp_path, monkeypatch, sized):
    spy = Spy()
    monkeypatch.setattr(coco_io, "mask_api", lambda: spy)
    far = [-5e8, -5e8, 5e8, -5e8, 5e8, 5e8]
    images = None if sized else [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    ann = write_coco(tmp_path, [{"segmentation": [far]}, {"image_id": 2, "segmentation": [SQUARE]}], images)
    code, lines = check_lines(f"coco:{ann}")
    assert code == 1
    where = f"{ann}: annotation 1 (image 1, a.png): " if sized else f"{ann}: image 1 (a.png): annotation 1: "
    assert f"{where}polygon point (-500000000.0, -500000000.0) lies more than an image side outside the 32x24 image" \
        in lines
    assert spy.largest <= 12  # only the good square was rasterised
    result = train(f"coco:{ann}", tmp_path / "runs")
    assert isinstance(result.exception, DataError) and str(result.exception).startswith(where)
    assert not (tmp_path / "runs").exists()


def test_a_polygon_a_pixel_outside_is_clipped(tmp_path):
    ann = write_coco(tmp_path, [{"segmentation": [[-1, -1, 12, -1, 12, 12, -1, 12]]},
                                {"image_id": 2, "segmentation": [SQUARE]}])
    report = check_dataset(f"coco:{ann}")
    assert report.usable and report.instances == [1, 1]
    _, labels = read_sample(discover(parse_data_spec(f"coco:{ann}")).samples[0])
    inside = np.zeros((H, W), bool)
    inside[:12, :12] = True
    assert np.array_equal(labels == 1, inside)


def test_an_outline_longer_than_the_image_has_pixels_is_refused(tmp_path):
    zigzag = [v for i in range(400) for v in ((0, 0) if i % 2 else (W, H))]  # 400 edges across the image
    ann = write_coco(tmp_path, [{"segmentation": [zigzag]}])
    assert load_coco(ann).problems == [
        f"{ann}: annotation 1 (image 1, a.png): the polygon's outline is 12800 px long, longer than the 32x24 "
        "image has pixels (768)"]


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), ("7", "'7'"),
                                          (True, "True"), ([1], "[1]")])
def test_non_finite_and_non_numeric_coordinates_are_named(tmp_path, value, shown):
    ann = write_coco(tmp_path, [{"segmentation": [[2, 2, 12, 2, value, 12]]}])
    assert load_coco(ann).problems == [
        f"{ann}: annotation 1 (image 1, a.png): coordinate 4 of the polygon is {shown}, not a finite number"]


def rle(mask: np.ndarray) -> dict:
    return {"size": list(mask.shape), "counts": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ["counts"].decode("ascii")}


def test_rle_runs_are_read_as_pycocotools_reads_them():
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (3, 7), (40, 33), (300, 301)):
        mask = rng.random(shape) < rng.random()
        flat = mask.ravel(order="F")
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        assert rle_string_runs(rle(mask)["counts"]).tolist() == ([0] if flat[0] else []) + np.diff(bounds).tolist()


@pytest.mark.parametrize("segmentation, problem", [
    ({"size": [H, W + 1], "counts": rle(np.ones((H, W + 1)))["counts"]},
     f"RLE size [{H}, {W + 1}] differs from the image's [{H}, {W}] (height, width)"),
    ({"size": [H, W], "counts": rle(np.ones((H, 2 * W)))["counts"]},
     f"compressed RLE runs cover {2 * H * W} pixels (smallest run 0); they must cover height x width = {H * W} "
     "exactly"),
    ({"size": [H, W], "counts": "0P"}, "RLE counts '0P' are not a COCO RLE string (characters '0' to 'o', at most 6 "
                                       "a run, the last one complete)"),
    ({"size": [H, W], "counts": "0\x00" + "1"}, "RLE counts '0\\x001' are not a COCO RLE string (characters '0' to "
                                                "'o', at most 6 a run, the last one complete)"),
    ({"size": [H, W], "counts": [H * W, 1]}, "uncompressed RLE counts must be whole numbers that add up to height x "
                                             "width"),
])
def test_rle_must_fit_its_image_exactly(tmp_path, segmentation, problem):
    ann = write_coco(tmp_path, [{"segmentation": segmentation}])
    assert load_coco(ann).problems == [f"{ann}: annotation 1 (image 1, a.png): {problem}"]


def test_rle_of_an_unsized_image_is_checked_against_the_file(tmp_path):
    counts = rle(np.ones((H, 2 * W)))["counts"]
    ann = write_coco(tmp_path, [{"segmentation": {"size": [H, 2 * W], "counts": counts}}],
                     [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}])
    code, lines = check_lines(f"coco:{ann}")
    assert code == 1 and (f"{ann}: image 1 (a.png): annotation 1: RLE size [{H}, {2 * W}] differs from the image's "
                          f"[{H}, {W}] (height, width)") in lines


@pytest.mark.parametrize("change, problem", [
    ({"bbox": [0, 0, float("nan"), 4], "segmentation": []},
     "bbox [0, 0, nan, 4] is not [x, y, width, height] (four finite numbers)"),
    ({"category_id": [1]}, "category_id [1] is not an integer id"),
    ({"category_id": 7}, "category_id 7 is not in 'categories'"),
    ({"iscrowd": [[[[[2]]]]]}, "iscrowd is [[[...]]], not 0 or 1"),
])
def test_odd_json_values_are_named_not_internal_errors(tmp_path, change, problem):
    ann = write_coco(tmp_path, [{"segmentation": [SQUARE], **change}])
    assert load_coco(ann).problems == [f"{ann}: annotation 1 (image 1, a.png): {problem}"]


def test_image_sizes_and_names_the_json_cannot_have(tmp_path):
    ann = write_coco(tmp_path, [], [{"id": 1, "file_name": "a.png", "height": 10**6, "width": 10**6},
                                    {"id": 2, "file_name": "\ud800.png"}])
    assert load_coco(ann).problems == [
        f"{ann}: image 1 is 1000000x1000000 (width x height), more than the {Image.MAX_IMAGE_PIXELS} pixels an image "
        "file may have",
        f"{ann}: images[1] file_name '\\ud800.png' is not a valid file name (a lone UTF-16 surrogate)"]


# -- 2. nesting -----------------------------------------------------------------------------------------


def test_json_nested_too_deeply_is_one_line_naming_the_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = subprocess.run([sys.executable, "-m", "instseg", "data", "check", f"coco:{deep}"], capture_output=True,
                            text=True, env=subprocess_env())
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"error: {deep}: not a COCO file: nested deeper than the JSON reader can follow "
                             f"(about {sys.getrecursionlimit()} levels)\n")


# -- 3. file names stay inside the image folder ----------------------------------------------------


def test_file_names_never_lead_out_of_the_image_folder(tmp_path):
    secret = tmp_path / "secret.png"
    write_rgb(secret, np.zeros((H, W, 3), np.uint8))
    before = secret.read_bytes()
    data = tmp_path / "data"
    ann = write_coco(data, [{"segmentation": [SQUARE]}, {"image_id": 2, "segmentation": [SQUARE]}],
                     [{"id": 1, "file_name": "../secret.png"}, {"id": 2, "file_name": str(secret)},
                      {"id": 3, "file_name": "/anywhere/a.png"}])
    code, lines = check_lines(f"coco:{ann}:{data}")
    assert code == 1
    assert [line for line in lines if "leads outside" in line] == [
        f"warning: {ann}: image 3 (/anywhere/a.png): file_name leads outside the image folder; using {data / 'a.png'}",
        f"{ann}: image 1 (../secret.png) leads outside the image folder, and secret.png is not in {data}",
        f"{ann}: image 2 ({secret}) leads outside the image folder, and secret.png is not in {data}"]
    assert secret.read_bytes() == before


# -- 4. train refuses what data check refuses -------------------------------------------------------


def test_a_cvppp_fg_mask_that_disagrees_stops_train_with_the_check_line(tmp_path):
    root = cvppp(tmp_path / "A1", n=3)
    write_palette(root / "plant002_fg.png", np.zeros((40, 36), np.uint8), 2)
    code, lines = check_lines(f"cvppp:{root}")
    line = next(line for line in lines if "plant002_fg.png" in line)
    assert code == 1 and line.startswith(f"{root / 'plant002_fg.png'}: foreground mask differs from label map > 0 at")
    result = train(f"cvppp:{root}", tmp_path / "runs")
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == f"{line}; run `instseg data check cvppp:{root}` for the full list"
    assert not (tmp_path / "runs").exists()


def test_boxes_without_masks_stop_train_with_the_check_line(tmp_path):
    ann = write_coco(tmp_path, [{"bbox": [2, 2, 8, 8], "segmentation": []},
                                {"image_id": 2, "bbox": [4, 4, 8, 8], "segmentation": []}])
    code, lines = check_lines(f"coco:{ann}")
    assert code == 1 and lines[-2:] == [f"{ann}: every label map is empty; nothing to learn",
                                        "1 problem(s): not usable for training"]
    result = train(f"coco:{ann}", tmp_path / "runs")
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == (f"{ann}: every label map is empty; nothing to learn; run `instseg data check "
                                     f"coco:{ann}` for the full list")


# -- 5. instances per training image are bounded ------------------------------------------------------


def test_a_label_map_with_too_many_instances_is_refused_by_check_and_train(tmp_path):
    most = limits.TRAINING_INSTANCES
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, count in (("few", 3), ("many", most + 1)):
        write_rgb(root / "images" / f"{name}.png", np.zeros((32, 32, 3), np.uint8))
        ids = np.zeros(32 * 32, np.uint16)
        ids[:count] = np.arange(1, count + 1)
        Image.fromarray(ids.reshape(32, 32)).save(root / "masks" / f"{name}.png")
    line = (f"{root / 'masks' / 'many.png'}: {most + 1} instances, more than the {most} a training image may hold "
            "(a training step grows with their square); split the image into tiles")
    code, lines = check_lines(f"folder:{root}")
    assert code == 1 and line in lines
    result = train(f"folder:{root}", tmp_path / "runs")
    assert isinstance(result.exception, DataError) and str(result.exception).startswith(line)


# -- 6. a million findings are a few lines ----------------------------------------------------------------


def test_many_annotations_in_one_image_are_summarised_and_never_decoded(tmp_path, monkeypatch):
    n = 2000
    monkeypatch.setattr(coco_io, "mask_api", lambda: pytest.fail("an image with too many annotations was decoded"))
    ann = write_coco(tmp_path, [{"bbox": [1, 1, 2, 2], "segmentation": []} for _ in range(n)],
                     [{"id": 1, "file_name": "a.png", "height": H, "width": W}])
    code, lines = check_lines(f"coco:{ann}")
    assert code == 1
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: {ann}: annotation {i} (image 1, a.png): no segmentation, only a box: the box is "
                        "ignored in the loss and metrics" for i in (1, 2, 3)] + \
        [f"warning: ... and {n - 3} more like this in {ann}"]
    assert (f"{ann}: image 1 (a.png): {n} annotations, more than the {limits.TRAINING_INSTANCES} instances a training "
            "image may hold (a training step grows with their square); split the image into tiles") in lines
    report = json.loads(cli.invoke(app, ["data", "check", f"coco:{ann}", "--json"]).stdout)
    assert (report["warning_count"], len(report["warnings"])) == (n, 4)


def test_decoding_findings_of_one_image_are_summarised(tmp_path):
    empty = {"size": [H, W], "counts": [H * W]}
    ann = write_coco(tmp_path, [{"segmentation": [SQUARE]}] + [{"segmentation": empty} for _ in range(9)])
    report = check_dataset(f"coco:{ann}")
    where = f"{ann}: image 1 (a.png)"
    assert [w for w in report.warnings if where in w] == [
        f"{where}: annotation {i} has an empty mask: skipped" for i in (2, 3, 4)] + [f"... and 6 more like this in {where}"]
    assert report.warning_count == len(report.warnings) + 5
