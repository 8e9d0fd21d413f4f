"""Reading image and label files safely: every bad file is one DataError line naming it."""

import os

import numpy as np
import pytest
from PIL import Image

from data_fixtures import write_raw_png
from instseg.data.samples import Sample, read_instance_labels, read_sample
from instseg.errors import DataError
from instseg.io.images import display_path, read_header, read_image, read_label_map


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 10000 x 9000 = 90 M pixels: above Pillow's MAX_IMAGE_PIXELS, where Pillow itself only warns.
    bomb = write_raw_png(tmp_path / "bomb.png", 10000, 9000, 1, 0)
    assert bomb.stat().st_size < 100_000
    assert 10000 * 9000 > Image.MAX_IMAGE_PIXELS
    for reader in (read_image, read_label_map, read_header):
        with pytest.raises(DataError) as exc:
            reader(bomb)
        assert one_line(exc).startswith(f"{bomb}: refused, too large to decode safely")
        assert "90000000 pixels" in str(exc.value)


def test_truncated_and_corrupt_files(tmp_path):
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "cut.png")
    assert one_line(exc).startswith(f"{tmp_path / 'cut.png'}: image is truncated or corrupted")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match="junk.png: not a readable image"):
        read_label_map(tmp_path / "junk.png")
    with pytest.raises(DataError, match="nothing.png: no such file"):
        read_header(tmp_path / "nothing.png")


def test_float_tiff_and_color_label_maps_are_refused(tmp_path):
    Image.fromarray(np.ones((5, 6), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError) as exc:
        read_label_map(tmp_path / "float.tif")
    assert "float.tif: label map holds floating-point values; instance ids must be integers" in one_line(exc)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png: label map must be a palette or single-channel image, got mode RGB"):
        read_label_map(tmp_path / "rgb.png")


def test_label_ids_negative_or_above_16_bit_are_refused(tmp_path):
    Image.fromarray(np.array([[0, -3]], np.int32)).save(tmp_path / "neg.tif")
    with pytest.raises(DataError, match="neg.tif: label map holds negative ids"):
        read_label_map(tmp_path / "neg.tif")
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(DataError, match="big.tif: label id 70000 is above 65535"):
        read_instance_labels(tmp_path / "big.tif")


def test_16_bit_tiff_and_png_images_become_rgb_in_0_1(tmp_path):
    grey = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(grey).save(tmp_path / "grey16.tif")
    img = read_image(tmp_path / "grey16.tif")
    assert img.shape == (4, 5, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 1], grey / 65535, atol=1e-6)
    # 16-bit RGB PNG (Pillow reads it at 8-bit precision): values still land in [0, 1]
    rgb16 = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(">u2")
    rows = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(4))
    img = read_image(write_raw_png(tmp_path / "rgb16.png", 5, 4, 16, 2, rows))
    assert img.shape == (4, 5, 3)
    np.testing.assert_allclose(img, rgb16 / 65535, atol=1 / 255)


def test_exif_orientation_is_applied_to_pixels_and_header(tmp_path):
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (30, 10, 3)
    header = read_header(tmp_path / "phone.jpg")
    assert (header.height, header.width) == (30, 10)


def test_non_utf8_names_read_and_print(tmp_path):
    name = os.fsdecode(b"plant\xff01_rgb.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    assert read_image(tmp_path / name).shape == (4, 4, 3)
    shown = display_path(tmp_path / name)
    assert shown.endswith("plant\\xff01_rgb.png")
    shown.encode("utf-8")  # printable: no lone surrogates left
    (tmp_path / os.fsdecode(b"bad\xfe.png")).write_bytes(b"nope")
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / os.fsdecode(b"bad\xfe.png"))
    assert "bad\\xfe.png: not a readable image" in one_line(exc)
    str(exc.value).encode("utf-8")


def test_image_and_label_sizes_must_agree(tmp_path):
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    with pytest.raises(DataError) as exc:
        read_sample(Sample("a", tmp_path / "a.png", tmp_path / "a_mask.png"))
    assert one_line(exc) == f"{tmp_path / 'a_mask.png'}: label map is 8x8 (HxW) but {tmp_path / 'a.png'} is 8x9"


def test_non_contiguous_ids_are_relabelled(tmp_path):
    Image.fromarray(np.array([[0, 5000, 5000], [300, 0, 65535]], np.uint16)).save(tmp_path / "m.png")
    labels = read_instance_labels(tmp_path / "m.png")
    assert labels.dtype == np.int64
    assert labels.tolist() == [[0, 2, 2], [1, 0, 3]]
