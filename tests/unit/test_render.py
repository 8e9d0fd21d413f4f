import json

import numpy as np
import pytest
from PIL import Image

from instseg.errors import DataError
from instseg.io.pictures import (BOUNDARY_RGB, SERIES_RGB, boundaries, colorize, embedding_rgb, instance_colors,
                                     label_colors, line_chart, neighbours, overlay, panel, read_metrics, training_curves)


def test_label_colors_are_distinct_and_background_is_black():
    colors = label_colors(40)
    assert colors.shape == (41, 3) and colors.dtype == np.uint8
    assert colors[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in colors}) == 41
    # consecutive ids (often neighbours in a rosette) differ clearly
    assert np.abs(colors[2:].astype(int) - colors[1:-1].astype(int)).sum(1).min() > 60


def test_boundaries_mark_instance_pixels_next_to_another_label():
    labels = np.array([[1, 1, 0, 0],
                       [1, 1, 2, 2],
                       [1, 1, 2, 2]])
    assert boundaries(labels).astype(int).tolist() == [[0, 1, 0, 0],
                                                       [0, 0, 1, 1],
                                                       [0, 0, 1, 0]]  # one pixel wide: id 2's side


def test_overlay_tints_instances_draws_boundaries_and_keeps_background():
    image = np.full((6, 6, 3), 0.5, np.float32)
    labels = np.zeros((6, 6), np.int64)
    labels[1:5, 1:5] = 1
    out = overlay(image, labels, alpha=0.5)
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 128, 128]  # background untouched
    assert out[1, 1].tolist() == list(BOUNDARY_RGB)  # instance rim
    expected = np.round(0.5 * 128 + 0.5 * label_colors(1)[1].astype(np.float32))
    assert out[2, 2].tolist() == expected.tolist()  # interior blended
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:5])


def test_neighbouring_instances_never_share_a_color_even_among_hundreds():
    rng = np.random.default_rng(0)
    labels = np.zeros((200, 200), np.int64)
    for i in range(1, 401):  # 400 nuclei packed on a jittered grid, many touching
        y, x = divmod(i - 1, 20)
        y0, x0 = y * 10 + rng.integers(0, 3), x * 10 + rng.integers(0, 3)
        labels[y0:y0 + 9, x0:x0 + 9] = i
    colors = instance_colors(labels)
    pairs = neighbours(labels)
    assert len(pairs) > 700
    assert (colors[pairs[:, 0]] != colors[pairs[:, 1]]).any(axis=1).all()
    assert len({tuple(c) for c in colors[1:]}) <= 14  # a small palette, not 400 near-identical hues


def test_colorize_uses_label_colors():
    labels = np.array([[0, 0, 0], [0, 3, 0], [0, 0, 0]])
    out = colorize(labels, outline=False)
    assert out[1, 1].tolist() == label_colors(3)[3].tolist() and out[0, 0].tolist() == [0, 0, 0]


def test_embedding_picture_gives_each_instance_its_own_color():
    labels = np.zeros((10, 12), np.int64)
    labels[1:5, 1:5], labels[5:9, 6:11] = 1, 2
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 8))
    emb = centers[labels].transpose(2, 0, 1) + rng.normal(0, 0.01, (8, 10, 12))
    picture = embedding_rgb(emb, labels > 0)
    assert picture.shape == (10, 12, 3) and picture.dtype == np.uint8
    a, b = picture[2, 2].astype(int), picture[6, 8].astype(int)
    assert np.abs(a - b).sum() > 100
    assert picture[0, 0].max() <= 64  # background dimmed
    assert embedding_rgb(np.zeros((4, 5, 5))).shape == (5, 5, 3)  # degenerate input: no crash


def test_panel_scales_tiles_to_one_height_and_stacks_rows():
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.zeros((10, 10, 3), np.uint8)
    grid = panel([[("a", a), ("b", b)], [("c", a)]], gap=4)
    caption = 18
    assert grid.shape == (2 * (20 + caption) + 4, 30 + 4 + 20, 3)
    with pytest.raises(ValueError, match="at least one tile"):
        panel([])


def test_line_chart_draws_each_series_and_skips_bad_points():
    chart = line_chart({"a": [(1, 1.0), (2, 0.5), (3, float("nan"))], "b": [(1, 0.1), (2, 0.2)]}, "t", log_y=True)
    assert chart.shape == (320, 480, 3)
    for color in SERIES_RGB[:2]:
        assert (chart == color).all(axis=2).sum() > 20
    empty = line_chart({"a": []}, "nothing")
    assert not (empty == SERIES_RGB[0]).all(axis=2).any()


def test_training_curves_from_metrics_jsonl(tmp_path):
    records = [{"epoch": e, "train": {"loss": 3.0 / e, "disc": 2.0 / e}, "val": {"sbd": 0.2 * e, "fg_dice": 0.3 * e}}
               for e in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_metrics(path) == records
    picture = training_curves(read_metrics(path))
    assert picture.shape == (320, 960, 3)
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(DataError, match=r"metrics.jsonl:4: not a JSON line"):
        read_metrics(path)


def test_trainer_epoch_pictures(tmp_path):
    from instseg.instances.clustering import ClusterParams
    from instseg.data import SyntheticLeaves
    from instseg.predict.evaluation import save_epoch_pictures
    from instseg.testing import tiny_model

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train": {"loss": 1.0}, "val": {"sbd": 0.1}}) + "\n")
    save_epoch_pictures(tmp_path, 1, tiny_model("unet"), SyntheticLeaves(3, 48, split="val"), "cpu",
                        ClusterParams(), image_size=32, images=2)
    grid = np.asarray(Image.open(tmp_path / "pictures" / "epoch-001.png"))
    assert grid.shape[0] == 2 * (32 + 18) + 4 and grid.shape[1] == 4 * 32 + 3 * 4  # 2 rows x 4 tiles at 32 px
    assert Image.open(tmp_path / "curves.png").size == (960, 320)
    import torch

    mixed = [{"image": torch.rand(3, h, w), "labels": torch.zeros(h, w, dtype=torch.int64)} for h, w in ((40, 40), (40, 60))]
    save_epoch_pictures(tmp_path, 2, tiny_model("unet"), mixed, "cpu", ClusterParams(), image_size=20)
    rows = np.asarray(Image.open(tmp_path / "pictures" / "epoch-002.png"))
    assert rows.shape == (2 * (20 + 18) + 4, 4 * 30 + 3 * 4, 3)  # images of different sizes, one row each
