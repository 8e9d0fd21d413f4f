"""The CLI on COCO files as annotation tools export them: Label Studio (0-based ids, no
`iscrowd`, `file_name` under images/, rectangles as `segmentation: []`) and CVAT (1-based ids,
annotations/ beside images/, masks as uncompressed RLE with `iscrowd: 1`); train with
--tensorboard, evaluate with COCO mask AP, predict --coco, evaluate --coco-gt."""

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.train.config import TrainConfig
from instseg.data.coco_example import write_coco_example
from instseg.data.layouts import discover, parse_data_spec
from instseg.data.samples import read_sample
from instseg.train.tensorboard import PICTURE_TAG
from instseg.errors import ConfigError
from instseg.metrics.scores import IGNORE

cli = CliRunner()
TINY = ["--width", "4", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]


def label_studio_export(root: Path) -> Path:
    """Label Studio's COCO export: result.json beside images/, ids from 0, no iscrowd, polygons
    and rectangles (a box with an empty segmentation); masks it does not export."""
    example = json.loads(write_coco_example(root, n=6, size=(48, 64)).read_text())
    annotations = []
    for ann in example["annotations"]:
        if ann["iscrowd"] or isinstance(ann["segmentation"], dict):
            continue
        entry = {k: v for k, v in ann.items() if k != "iscrowd"}
        entry.update(id=ann["id"] - 1, image_id=ann["image_id"] - 1, category_id=ann["category_id"] - 1)
        annotations.append(entry)
    annotations[1]["segmentation"] = []  # a rectangle
    data = {"images": [{**image, "id": image["id"] - 1, "file_name": f"images/{image['file_name']}"}
                       for image in example["images"]],
            "categories": [{"id": 0, "name": "round"}, {"id": 1, "name": "oval"}], "annotations": annotations,
            "info": {"contributor": "Label Studio"}}
    (root / "annotations.json").unlink()
    (root / "result.json").write_text(json.dumps(data))
    return root / "result.json"


def cvat_export(root: Path, masks_only: bool = False) -> Path:
    """CVAT's "COCO 1.0": annotations/instances_default.json beside images/, ids from 1,
    attributes, masks as uncompressed RLE marked iscrowd 1."""
    example = json.loads(write_coco_example(root, n=3, size=(48, 64)).read_text())
    for ann in example["annotations"]:
        ann["attributes"] = {"occluded": False}
        if isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"]["counts"], list):
            ann["iscrowd"] = 1  # a mask shape without an is_crowd attribute
    if masks_only:
        example["annotations"] = [a for a in example["annotations"] if a["iscrowd"]]
    example.update(licenses=[{"name": "", "id": 0, "url": ""}], info={"contributor": "", "version": ""})
    (root / "annotations").mkdir()
    (root / "annotations.json").unlink()
    (root / "annotations" / "instances_default.json").write_text(json.dumps(example))
    return root / "annotations" / "instances_default.json"


def test_cvat_export_reads_and_a_masks_only_export_is_refused(tmp_path):
    ann = cvat_export(tmp_path / "cvat")
    result = cli.invoke(app, ["data", "check", f"coco:{ann}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 3
    sample = discover(parse_data_spec(f"coco:{ann}")).samples[2]  # image 3 holds the RLE masks
    crowd = next(a for a in json.loads(ann.read_text())["annotations"] if a["iscrowd"] and a["image_id"] == 3)
    _, labels = read_sample(sample)
    assert (labels == IGNORE).sum() > 0 and (labels == IGNORE).sum() <= sum(crowd["segmentation"]["counts"][1::2])
    masks = cvat_export(tmp_path / "masks", masks_only=True)
    result = cli.invoke(app, ["data", "check", f"coco:{masks}"])
    assert result.exit_code == 1
    assert "every mask is a crowd region (iscrowd 1)" in result.stderr and "is_crowd attribute" in result.stderr


def test_missing_tensorboard_is_a_one_line_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'instseg\[tensorboard\]'"):
        TrainConfig(tensorboard=True).validate()


@pytest.mark.slow
def test_label_studio_export_trains_evaluates_and_round_trips(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ann = label_studio_export(tmp_path / "ls")
    result = cli.invoke(app, ["data", "check", f"coco:{ann}"])
    assert result.exit_code == 0, result.output
    assert "no segmentation, only a box: the box is ignored" in result.stderr
    samples = discover(parse_data_spec(f"coco:{ann}")).samples
    box = json.loads(ann.read_text())["annotations"][1]
    _, labels = read_sample(next(s for s in samples if s.labels.image.id == box["image_id"]))
    x, y, w, h = (round(v) for v in box["bbox"])
    assert (labels[y + 1:y + h - 1, x + 1:x + w - 1] != 0).all() and (labels == IGNORE).any()

    run = tmp_path / "runs" / "ls"
    result = cli.invoke(app, ["train", *TINY, "--data", f"coco:{ann}", "--tensorboard", "--out",
                              str(tmp_path / "runs"), "--name", "ls"])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert {"train/loss", "train/disc", "train/ce", "train/lr", "val/sbd", "val/ap"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("train/loss")) == steps and events.Tags()["images"] == [PICTURE_TAG]

    result = cli.invoke(app, ["evaluate", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    coco = json.loads((tmp_path / "eval" / "metrics.json").read_text())["coco"]
    # 1 epoch at 32 px finds no leaves yet: no detections, AP 0 (and predict --coco below writes no annotations)
    assert (coco["AP"], coco["detections"]) == (0.0, 0) and "COCO mask AP" in result.output
    train = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["train"]
    assert train["loss"] == pytest.approx(7.388, rel=5e-3)  # seeded, one torch thread: measured 7.3876

    preds = tmp_path / "preds.json"
    args = ["predict", str(run), str(tmp_path / "ls" / "images"), "--out", str(tmp_path / "pred"), "--no-overlay",
            "--gt", str(ann), "--coco", str(preds), "--device", "cpu"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads(preds.read_text())
    truth = json.loads(ann.read_text())
    assert written["images"] == truth["images"]  # Label Studio's 0-based ids and file names, matched by name
    assert all(0.0 <= a["score"] <= 1.0 and a["iscrowd"] == 0 for a in written["annotations"])
    result = cli.invoke(app, ["evaluate", "--coco-gt", str(ann), "--pred", str(preds), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["coco"]["images"] == 6
    result = cli.invoke(app, args)  # the results file is there now: not replaced unasked
    assert result.exit_code == 1 and "choose another --coco file" in str(result.exception)
