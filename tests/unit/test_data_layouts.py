"""CVPPP and folder layouts: discovery, pairing by stem, splits and every structural problem."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import SIZE, cvppp, folder, labels_of, png_bit_depth
from instseg.data import build_datasets, parse_data_spec
from instseg.data.layouts import DataSpec, discover
from instseg.data.samples import read_name_list, split_samples
from instseg.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]


def build(spec, **kwargs):
    options = {"image_size": 32, "seed": 0, "train_size": 1, "val_size": 1, **kwargs}
    return build_datasets(spec, **options)


@pytest.mark.parametrize("colors, bits", [(16, 4), (256, 8)])
def test_cvppp_palette_labels_are_read_by_index(tmp_path, colors, bits):
    root = cvppp(tmp_path / "A1", n=3, colors=colors)
    assert png_bit_depth(root / "plant001_label.png") == bits
    layout = discover(parse_data_spec(str(root)))  # layout detected from the files
    assert layout.kind == "cvppp" and not layout.problems
    assert [s.name for s in layout.samples] == ["plant001", "plant002", "plant003"]
    assert all(s.fg is not None and s.count is not None for s in layout.samples)
    train, _ = build(f"cvppp:{root}", val_split=0.34)
    for i, sample in enumerate(train.samples):
        item = train.read(i)
        plant = int(sample.name[-3:])
        expected = labels_of(plant, max_leaves=min(20, colors - 1))
        assert item["labels"].dtype == torch.int64 and item["labels"].shape == SIZE
        assert np.array_equal(item["labels"].numpy(), expected)
        assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.float32
        assert item["name"] == sample.name


def test_cvppp_test_set_without_labels_is_prediction_only(tmp_path):
    root = cvppp(tmp_path / "A1", n=2, with_csv=False)
    for p in root.glob("*_label.png"):
        p.unlink()
    for p in root.glob("*_fg.png"):
        p.unlink()
    layout = discover(DataSpec("cvppp", str(root)))
    assert not layout.problems and len(layout.samples) == 2 and not layout.labelled
    with pytest.raises(DataError, match="no label maps found .*usable for prediction only"):
        build(f"cvppp:{root}")


def test_cvppp_unmatched_files_and_csv_problems(tmp_path):
    root = cvppp(tmp_path / "A1", n=4)
    (root / "plant002_label.png").unlink()
    (root / "plant009_label.png").write_bytes((root / "plant001_label.png").read_bytes())
    with open(root / "A1.csv", "a") as f:
        f.write("plant077_rgb.png,12\nplant003_rgb.png,many\n")
    (root / "notes.txt").write_text("hello")
    layout = discover(DataSpec("cvppp", str(root)))
    problems = "\n".join(layout.problems)
    assert f"{root / 'plant009_label.png'}: no matching _rgb.png image" in problems
    assert f"{root / 'plant002_rgb.png'}: no matching _label.png label map" in problems
    assert "lists plant077_rgb.png, which is not in the folder" in problems
    assert "row 6 is not '<file>,<whole-number count>'" in problems
    assert layout.notes == ["ignored 1 other file(s), e.g. notes.txt"]
    with pytest.raises(DataError) as exc:
        build(f"cvppp:{root}")
    assert "\n" not in str(exc.value) and f"run `instseg data check {root}`" in str(exc.value)


def test_folder_layout_pairs_by_stem_and_relabels(tmp_path):
    root = folder(tmp_path / "data", sizes=((40, 36), (48, 56), (40, 36), (32, 32)))
    layout = discover(parse_data_spec(str(root)))
    assert layout.kind == "folder" and not layout.problems
    assert [s.image.name for s in layout.samples] == ["img0.png", "img1.jpg", "img2.tif", "img3.png"]
    assert [s.labels.name for s in layout.samples] == ["img0.png", "img1.tif", "img2.png", "img3.tif"]
    train, val = build(f"folder:{root}", val_split=0.25)
    assert len(train) == 3 and len(val) == 1
    for dataset in (train, val):
        for i, sample in enumerate(dataset.samples):
            item = dataset.read(i)
            ids = torch.unique(item["labels"]).tolist()
            assert ids == list(range(len(ids)))  # 0 and 1..N: the 1000-steps were relabelled
            assert item["image"].shape[1:] == item["labels"].shape == dataset.sizes()[i]
    assert sorted(train.sizes() + val.sizes()) == sorted([(40, 36), (48, 56), (40, 36), (32, 32)])


def test_pairing_follows_names_not_listing_order(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem, count in (("c", 3), ("a", 1), ("b", 2)):  # created out of order
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{stem}.png")
    for stem, count in (("b", 2), ("c", 3), ("a", 1)):
        labels = np.zeros((8, 8), np.uint8)
        labels[:count, :] = np.arange(1, count + 1)[:, None]
        Image.fromarray(labels).save(tmp_path / "masks" / f"{stem}.png")
    train, val = build(f"folder:{tmp_path}", val_split=0.34, augment=False)
    items = {ds.read(i)["name"]: int(ds.read(i)["labels"].max()) for ds in (train, val) for i in range(len(ds))}
    assert items == {"a": 1, "b": 2, "c": 3}


def test_folder_problems(tmp_path):
    root = folder(tmp_path / "data")
    (root / "images" / "img0.jpg").write_bytes((root / "images" / "img0.png").read_bytes())  # duplicate stem
    (root / "masks" / "img1.tif").rename(root / "masks" / "img1.jpg")  # lossy mask
    (root / "masks" / "extra.png").write_bytes((root / "masks" / "img0.png").read_bytes())
    (root / "images" / "readme.txt").write_text("x")
    layout = discover(DataSpec("folder", str(root)))
    problems = "\n".join(layout.problems)
    assert f"{root / 'images' / 'img0.png'}: same name as {root / 'images' / 'img0.jpg'}" in problems
    assert f"{root / 'masks' / 'img1.jpg'}: masks must be PNG or TIFF (lossless), not .jpg" in problems
    assert f"{root / 'masks' / 'extra.png'}: no matching image in images/" in problems
    assert f"{root / 'images' / 'img1.jpg'}: no matching mask in masks/" in problems
    assert any("readme.txt: ignored" in n for n in layout.notes)


def test_size_mismatch_and_float_labels_fail_before_training(tmp_path):
    root = folder(tmp_path / "data")
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(root / "masks" / "img0.png")
    with pytest.raises(DataError, match=r"img0.png: label map is 10x10 \(HxW\) but .*img0.png is 40x36"):
        build(f"folder:{root}")
    root = folder(tmp_path / "data2")
    Image.fromarray(np.zeros((48, 56), np.float32)).save(root / "masks" / "img1.tif")
    with pytest.raises(DataError, match="img1.tif: label map holds floating-point values"):
        build(f"folder:{root}")


def test_missing_empty_and_unknown_folders(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope'}: no such directory$"):
        build(f"cvppp:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"^{tmp_path / 'empty'}: folder is empty$"):
        build(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="neither a CVPPP folder"):
        parse_data_spec(str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="unknown --data 'imagenet'"):
        parse_data_spec("imagenet")
    cvppp(tmp_path / "CVPPP" / "A1", n=1)
    cvppp(tmp_path / "CVPPP" / "A2", n=1)
    with pytest.raises(DataError, match="point --data at one of its subfolders: A1, A2"):
        build(f"cvppp:{tmp_path / 'CVPPP'}")


def test_non_utf8_names_are_discovered(tmp_path):
    root = cvppp(tmp_path / "A1", n=2, with_csv=False)
    for kind in ("rgb", "label", "fg"):
        os.rename(root / f"plant002_{kind}.png", root / os.fsdecode(b"plant\xe9002_" + kind.encode() + b".png"))
    layout = discover(DataSpec("cvppp", str(root)))
    assert not layout.problems
    assert [s.name for s in layout.samples] == ["plant001", "plant\\xe9002"]
    train, val = build(f"cvppp:{root}", val_split=0.5)
    assert {train.read(0)["name"], val.read(0)["name"]} == {"plant001", "plant\\xe9002"}


def test_val_split_is_seeded_and_by_image(tmp_path):
    root = cvppp(tmp_path / "A1", n=10)
    samples = discover(DataSpec("cvppp", str(root))).labelled
    split = lambda seed: split_samples(samples, val_split=0.2, val_list=None, seed=seed)  # noqa: E731
    train, val = split(0)
    assert len(val) == 2 and len(train) == 8
    assert not {s.name for s in train} & {s.name for s in val}
    assert [s.name for s in split(0)[1]] == [s.name for s in val]
    assert any([s.name for s in split(seed)[1]] != [s.name for s in val] for seed in (1, 2, 3))
    with pytest.raises(DataError, match="at least 2 labelled images"):
        split_samples(samples[:1], val_split=0.2, val_list=None, seed=0)


def test_val_list(tmp_path):
    root = cvppp(tmp_path / "A1", n=5)
    listing = tmp_path / "val.txt"
    listing.write_text("# validation\nplant004\n\nplant002  # second\n")
    train, val = build(f"cvppp:{root}", val_list=str(listing))
    assert [s.name for s in val.samples] == ["plant002", "plant004"]
    assert [s.name for s in train.samples] == ["plant001", "plant003", "plant005"]
    listing.write_text("plant002\nplant042\n")
    with pytest.raises(DataError, match=r"val.txt: 1 name\(s\) not in the dataset: plant042"):
        build(f"cvppp:{root}", val_list=str(listing))
    listing.write_text("\n".join(f"plant{i:03d}" for i in range(1, 6)))
    with pytest.raises(DataError, match="lists every image; nothing is left for training"):
        build(f"cvppp:{root}", val_list=str(listing))
    with pytest.raises(ConfigError, match="synthetic data uses --val-size"):
        build("synthetic", val_list=str(listing))


def test_shipped_cvppp_a1_validation_list():
    names = read_name_list(REPO / "splits" / "cvppp_a1_val.txt")
    assert len(names) == 28 and len(set(names)) == 28
    assert all(n.startswith("plant") and len(n) == 8 for n in names)
    assert {"plant031", "plant007", "plant152"} <= set(names)
