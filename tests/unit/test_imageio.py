import numpy as np
import pytest
from PIL import Image

from instseg.errors import DataError
from instseg.io.images import read_image, read_label_map
from instseg.io.writing import write_label_map, write_rgb


def test_rgba_grey_and_16_bit_become_rgb_floats(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.float32 and img[0, 0].tolist() == [1.0, 0.0, 0.0]

    Image.fromarray(np.full((4, 5), 128, np.uint8), "L").save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (4, 5, 3)

    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "w.png")
    assert read_image(tmp_path / "w.png").max() == pytest.approx(1.0)


def test_palette_labels_are_read_by_index(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    image = Image.fromarray(labels, "P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    image.save(tmp_path / "p.png")
    assert read_label_map(tmp_path / "p.png").tolist() == [[0, 1], [2, 3]]


def test_label_png_round_trip_16_bit(tmp_path):
    labels = np.array([[0, 300], [65535, 2]])
    write_label_map(tmp_path / "l.png", labels)
    assert read_label_map(tmp_path / "l.png").tolist() == labels.tolist()
    write_rgb(tmp_path / "o.png", np.zeros((2, 2, 3), np.uint8))
    assert not list(tmp_path.glob(".*.tmp"))


def test_errors_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((3, 3), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="floating-point"):
        read_label_map(tmp_path / "f.tif")


def test_working_size_keeps_aspect_and_maps_shorter_side():
    from instseg.io.images import working_size

    assert working_size(530, 500, 256) == (271, 256)
    assert working_size(100, 300, 50) == (50, 150)


def test_resize_image_and_labels():
    from instseg.io.images import resize_image, resize_labels

    img = np.random.rand(10, 20, 3).astype(np.float32)
    out = resize_image(img, (5, 7))
    assert out.shape == (5, 7, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    labels = np.zeros((10, 20), np.int64)
    labels[:, 10:] = 7
    small = resize_labels(labels, (4, 6))
    assert set(np.unique(small)) == {0, 7} and small.dtype == np.int64
    assert resize_labels(small, (10, 20)).shape == (10, 20)
