"""COCO in and out: a tiny COCO file written here (two images: polygons, compressed and
uncompressed RLE, a crowd region, an overlap) decodes into label maps by the documented rules,
round-trips through a results file to AP 1.0, and a hand-worked imperfect case gets its AP."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.data import build_datasets
from instseg.data.checks import check_dataset
from instseg.data.coco_example import uncompressed_rle
from instseg.data.layouts import discover, parse_data_spec
from instseg.data.samples import read_sample
from instseg.train.losses import MultiTaskLoss
from instseg.models.interfaces import SegOutput
from instseg.errors import DataError
from instseg.io.coco import load_coco
from instseg.io.coco_results import (LabelMapCoco, ResultsFile, coco_ap, instance_scores, numbered,
                                           score_coco_files)
from instseg.io.writing import write_rgb
from instseg.metrics.scores import IGNORE, score_image
from instseg.predict.pipeline import Prediction

cli = CliRunner()
H, W = 32, 48


def rect(y0, y1, x0, x1, size=(H, W)):
    mask = np.zeros(size, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def compressed(mask):
    return {"size": list(mask.shape), "counts": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
            .decode("ascii")}


SQUARE = [2, 2, 14, 2, 14, 14, 2, 14]
TWO_PARTS = [[2, 2, 10, 2, 10, 10, 2, 10], [20, 20, 30, 20, 30, 30, 20, 30]]
RECT2, RECT3, CROWD = rect(16, 28, 20, 36), rect(20, 24, 34, 42), rect(0, 6, 40, 48)  # RECT3 covers 8 px of RECT2


def polygon_mask(polygons):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, H, W))).astype(bool)


def tiny_coco(root: Path) -> Path:
    """Two images; image 1: a polygon, a compressed RLE overlapped by a smaller uncompressed one,
    a crowd region; image 2: a two-part polygon and a compressed RLE. Two categories."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        write_rgb(root / name, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    anns = [(1, 1, [SQUARE], 0), (1, 2, compressed(RECT2), 0), (1, 1, uncompressed_rle(RECT3), 0),
            (1, 1, compressed(CROWD), 1), (2, 1, TWO_PARTS, 0), (2, 2, compressed(rect(2, 12, 30, 44)), 0)]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                       {"id": 2, "file_name": "b.png", "height": H, "width": W}],
            "categories": [{"id": 1, "name": "leaf"}, {"id": 2, "name": "bug"}],
            "annotations": [{"id": n, "image_id": i, "category_id": c, "segmentation": s, "iscrowd": crowd,
                             "bbox": [float(v) for v in mask_utils.toBbox(
                                 mask_utils.merge(mask_utils.frPyObjects(s, H, W)) if isinstance(s, list)
                                 else mask_utils.frPyObjects(s, H, W) if isinstance(s["counts"], list) else s)]}
                            for n, (i, c, s, crowd) in enumerate(anns, start=1)]}
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


def region(labels, y, x):
    return labels == labels[y, x]


def test_decoding_ignores_crowds_and_gives_overlaps_to_the_smaller(tmp_path):
    ann = tiny_coco(tmp_path)
    layout = discover(parse_data_spec(f"coco:{ann}"))
    assert [s.name for s in layout.samples] == ["a", "b"] and not layout.problems
    _, labels = read_sample(layout.samples[0])
    assert labels.dtype == np.int64 and set(np.unique(labels)) == {IGNORE, 0, 1, 2, 3}
    assert np.array_equal(region(labels, 21, 35), RECT3)  # the smaller keeps the 8 shared pixels
    assert np.array_equal(region(labels, 17, 21), RECT2 & ~RECT3)
    assert np.array_equal(region(labels, 5, 5), polygon_mask([SQUARE]))
    assert np.array_equal(labels == IGNORE, CROWD)
    _, labels = read_sample(layout.samples[1])
    assert np.array_equal(region(labels, 5, 5), polygon_mask(TWO_PARTS))  # one instance, two parts
    assert labels.max() == 2  # two categories, all foreground
    report = check_dataset(f"coco:{ann}")
    assert report.usable and report.instances == [3, 2]
    assert [w for w in report.warnings if "overlapping" in w] == [
        f"{ann}: image 1 (a.png): 1 overlapping annotation pair(s), the smaller keeps the pixels: 3 over 2 (8 px)"]


def prediction(index, name, labels, probability):
    return Prediction(Path(name), Path(name).stem, np.zeros(labels.shape + (3,), np.float32), labels, 0.0,
                      np.zeros((2, *labels.shape), np.float32), labels > 0, index, probability)


def test_round_trip_to_ap_one(tmp_path):
    ann = tiny_coco(tmp_path / "data")
    results = ResultsFile(tmp_path / "results.json", load_coco(ann))
    gathered = LabelMapCoco()
    for index, sample in enumerate(discover(parse_data_spec(f"coco:{ann}")).samples):
        _, labels = read_sample(sample)
        pred = np.where(labels == IGNORE, 0, labels)
        results.add(prediction(index, sample.image.name, pred, np.full(labels.shape, 0.9, np.float32)))
        gathered.add(sample.name, labels, pred, instance_scores(pred, np.ones(labels.shape)))
    results.write()
    written = json.loads((tmp_path / "results.json").read_text())
    assert [(i["id"], i["file_name"]) for i in written["images"]] == [(1, "a.png"), (2, "b.png")]
    assert written["categories"] == [{"id": 1, "name": "object", "supercategory": ""}]  # two categories: one foreground class
    assert len(written["annotations"]) == 5 and {a["score"] for a in written["annotations"]} == {0.9}
    report = score_coco_files(ann, tmp_path / "results.json")
    assert report.coco["AP"] == report.coco["AP50"] == report.coco["AP75"] == report.coco["APs"] == 1.0
    assert report.coco["APm"] is None and report.coco["APl"] is None  # no medium or large instance
    assert [row.scores.sbd for row in report.rows] == [1.0, 1.0]
    assert gathered.summary()["AP"] == 1.0
    result = cli.invoke(app, ["evaluate", "--coco-gt", str(ann), "--pred", str(tmp_path / "results.json"),
                              "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["coco"]["AP"] == 1.0
    assert "COCO mask AP" in result.output


def test_a_hand_worked_imperfect_case(tmp_path):
    """GT: an 8x8 and a 10x10 square. Detections: the first exactly (score .9), a false positive
    (.8), 72 px inside the second (.7, IoU .72). Up to IoU .70 the ranked hits are TP FP TP:
    precision 1 up to recall .5, 2/3 up to 1, so 101-point AP = (51 + 50 * 2/3) / 101; above .72,
    TP FP FP: (51 * 1) / 101. AP = mean over the ten thresholds, 5 of each kind."""
    size = (64, 64)
    gt1, gt2 = rect(4, 12, 4, 12, size), rect(30, 40, 30, 40, size)
    dets = [(gt1, 0.9), (rect(50, 56, 50, 56, size), 0.8), (rect(30, 39, 30, 38, size), 0.7)]
    truth = {"images": [{"id": 7, "file_name": "x.png", "height": 64, "width": 64}],
             "categories": [{"id": 1, "name": "cell"}],
             "annotations": [{"id": n, "image_id": 7, "category_id": 1, "segmentation": compressed(m), "iscrowd": 0,
                              "area": float(m.sum()), "bbox": [0, 0, 1, 1]} for n, m in ((1, gt1), (2, gt2))]}
    results = [{"image_id": 7, "category_id": 1, "segmentation": compressed(m), "score": s} for m, s in dets]
    ap50, ap75 = (51 + 50 * 2 / 3) / 101, 51 / 101
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "results.json").write_text(json.dumps(results))  # a plain COCO results list
    coco = score_coco_files(tmp_path / "gt.json", tmp_path / "results.json").coco
    assert coco["AP50"] == pytest.approx(ap50) and coco["AP75"] == pytest.approx(ap75)
    assert coco["AP"] == pytest.approx((ap50 + ap75) / 2) == pytest.approx(0.66997, abs=1e-5)
    assert coco["APs"] == pytest.approx(coco["AP"]) and coco["APm"] is None
    direct = coco_ap({**truth, "annotations": truth["annotations"]},
                     numbered([{**r, "segmentation": r["segmentation"], "area": 1.0, "bbox": [0, 0, 1, 1],
                                "iscrowd": 0} for r in results]))
    assert direct["AP"] == pytest.approx(coco["AP"])


def test_instance_score_is_the_mean_foreground_probability_inside_the_mask():
    labels = np.array([[1, 1, 0], [2, 2, 2]])
    probability = np.array([[0.9, 0.7, 0.1], [0.2, 0.4, 0.6]])
    assert instance_scores(labels, probability)[1:] == pytest.approx([0.8, 0.4])


def test_ignored_pixels_change_no_loss_term_and_no_metric():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4], labels[0, 4:, 4:], labels[0, :4, 4:] = 1, 2, IGNORE
    torch.manual_seed(0)
    semantic, embedding = torch.randn(1, 2, 8, 8), torch.randn(1, 4, 8, 8)
    loss = MultiTaskLoss(max_instances=5)
    before = loss(SegOutput(semantic, embedding, torch.full((1, 1), 0.4)), labels)
    semantic[0, :, :4, 4:], embedding[0, :, :4, 4:] = 50.0, -30.0  # anything at all where labels are IGNORE
    after = loss(SegOutput(semantic, embedding, torch.full((1, 1), 0.4)), labels)
    assert {k: float(v) for k, v in before.items()} == pytest.approx({k: float(v) for k, v in after.items()})
    assert float(before["count"]) == pytest.approx(0.0)  # two instances of max 5: the count target is 0.4
    gt = labels[0].numpy()
    pred = np.where(gt == IGNORE, 3, gt)  # an extra instance, inside the crowd region only
    scores = score_image(pred, gt)
    assert (scores.sbd, scores.dic, scores.ap) == (1.0, 0, 1.0)


def test_splits_by_image_id_or_by_a_second_json(tmp_path):
    ann = tiny_coco(tmp_path)
    (tmp_path / "val.txt").write_text("2\n")
    train, val = build_datasets(f"coco:{ann}", image_size=32, seed=0, train_size=1, val_size=1,
                                val_list=tmp_path / "val.txt")
    assert (train.samples[0].name, val.samples[0].name) == ("a", "b")
    data = json.loads(ann.read_text())
    data["images"] = data["images"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    (tmp_path / "val.json").write_text(json.dumps(data))
    train, val = build_datasets(f"coco:{ann}", image_size=32, seed=0, train_size=1, val_size=1,
                                val_list=tmp_path / "val.json")
    assert (train.samples[0].name, val.samples[0].name) == ("b", "a")
    (tmp_path / "val.txt").write_text("9\n")
    with pytest.raises(DataError, match="1 name\\(s\\) not in the dataset: 9"):
        build_datasets(f"coco:{ann}", image_size=32, seed=0, train_size=1, val_size=1, val_list=tmp_path / "val.txt")


def test_data_check_gives_one_line_per_problem(tmp_path):
    ann = tiny_coco(tmp_path)
    data = json.loads(ann.read_text())
    data["images"] += [{"id": 3, "file_name": "missing.png", "height": H, "width": W},
                       {"id": 1, "file_name": "c.png", "height": H, "width": W}]
    anns = data["annotations"]
    anns[0]["bbox"] = [40.0, 2.0, 20.0, 12.0]  # reaches x = 60 in a 48 px wide image
    anns[4]["segmentation"] = [[1, 2, 3, 4]]  # two points: not a polygon
    anns[5]["id"] = 2  # the id of annotation 2 again
    anns.append({"id": 9, "image_id": 1, "category_id": 1, "segmentation": [], "bbox": [0, 20, 4, 4]})
    ann.write_text(json.dumps(data))
    result = cli.invoke(app, ["data", "check", f"coco:{ann}"])
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(ann))]
    assert problems == [
        f"{ann}: images[3] repeats image id 1 of images[0]",
        f"{ann}: annotation 1 (image 1, a.png): bbox [40.0, 2.0, 20.0, 12.0] lies outside the 48x32 image",
        f"{ann}: annotation 5 (image 2, b.png): a polygon must be a list of at least 3 x, y pairs",
        f"{ann}: annotation 2: duplicate annotation id",
        f"{ann}: image 3 (missing.png) not found in {tmp_path}, {tmp_path / 'images'}, {tmp_path.parent / 'images'}",
    ]
    assert (f"warning: {ann}: annotation 9 (image 1, a.png): no segmentation, only a box: the box is ignored in the "
            "loss and metrics") in result.stderr
    assert "5 problem(s): not usable for training" in result.stderr


def test_the_spec_names_the_json_and_optionally_the_image_folder(tmp_path):
    ann = tiny_coco(tmp_path / "labels")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        (ann.parent / name).rename(photos / name)
    spec = parse_data_spec(f"coco:{ann}:{photos}")
    assert (spec.kind, spec.path, spec.images) == ("coco", str(ann), str(photos))
    assert parse_data_spec(str(spec.absolute())) == spec.absolute()  # what config.json stores reads back
    assert [s.image for s in discover(spec).samples] == [photos / "a.png", photos / "b.png"]
    assert parse_data_spec(str(ann)).kind == "coco"  # a bare .json path
    assert "not found in" in discover(parse_data_spec(f"coco:{ann}")).problems[0]
