"""Microscopy input (issue 25, part 1): TIFF / OME-TIFF pages, channels and axes through tifffile,
one intensity-scaling rule for every dtype, reader and Pillow mode, and the reading recorded with
the model. Every file is tiny and generated in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps
from typer.testing import CliRunner

from instseg.checkpoint import ModelRecord
from instseg.cli.main import app
from instseg.data.checks import check_dataset
from instseg.errors import CheckpointError, ConfigError, DataError
from instseg.io.images import display_path, image_from_array, read_header, read_image, read_label_map
from instseg.io.writing import write_label_map
from instseg.io.microscopy import (FIXED, Reading, parse_channels, percentile_scaled, pillow_array,
                                   scale_intensities)
from instseg.runtime.metadata import ModelInfo
from instseg.train.config import TrainConfig

RAMP = (np.arange(32 * 32) % 1000).reshape(32, 32)
STORED = {"L": "u1", "I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}  # how each mode holds its pixels


def pillow_image(mode: str, values: np.ndarray) -> Image.Image:
    """A Pillow image of `mode` holding `values` (1: from booleans), made in memory."""
    if mode == "1":
        return Image.fromarray(values.astype(np.uint8) * 255).convert("1", dither=Image.Dither.NONE)
    return Image.frombytes(mode, values.shape[::-1], values.astype(STORED[mode]).tobytes())


def scaled(image: Image.Image, normalize: str = "fixed") -> np.ndarray:
    """What the one scaling rule makes of a Pillow image's stored values."""
    return scale_intensities(pillow_array(image), normalize, "x")


# -- one rule for every Pillow mode -----------------------------------------------------------------

@pytest.mark.parametrize("mode, values, expected", [
    ("L", np.uint8([[0, 51, 255]]), [0.0, 0.2, 1.0]),
    ("I;16", np.uint16([[0, 200, 65535]]), [0.0, 200 / 65535, 1.0]),
    ("I;16B", np.uint16([[0, 200, 65535]]), [0.0, 200 / 65535, 1.0]),
    ("I", np.int32([[0, 200, 65535]]), [0.0, 200 / 65535, 1.0]),  # a 16-bit PNG as Pillow 10 opens it
    ("F", np.float32([[0.0, 0.25, 1.0]]), [0.0, 0.25, 1.0]),
    ("1", np.bool_([[False, True, True]]), [0.0, 1.0, 1.0]),
])
def test_every_pillow_mode_is_scaled_by_its_dtype_never_by_its_own_maximum(mode, values, expected):
    image = pillow_image(mode, values)
    assert image.mode == mode
    np.testing.assert_allclose(scaled(image)[0, :, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("mode", ["L", "I;16", "I;16B", "I", "F", "1"])
def test_every_pillow_mode_takes_percentiles_of_its_stored_values(mode):
    values = {"1": RAMP[:4] % 2 == 1, "L": RAMP[:4] // 4, "F": RAMP[:4] / 1000}.get(mode, RAMP[:4])
    low, high = np.percentile(values.astype(np.float64), (1.0, 99.8))
    expected = np.clip((values - low) / (high - low), 0, 1)
    np.testing.assert_allclose(scaled(pillow_image(mode, values), "percentile")[..., 0], expected, atol=1e-6)


def test_a_dim_16_bit_image_reads_the_same_as_mode_i_and_i16(tmp_path):
    values = np.uint16([[0, 100, 200]])
    np.testing.assert_array_equal(scaled(pillow_image("I;16", values)), scaled(pillow_image("I", values)))
    Image.fromarray(values).save(tmp_path / "dim.png")
    np.testing.assert_allclose(read_image(tmp_path / "dim.png")[0, :, 0], values[0] / 65535, rtol=1e-6)


@pytest.mark.parametrize("mode, suffix", [("RGB", ".png"), ("RGBA", ".png"), ("LA", ".png"), ("P", ".png"),
                                          ("P", ".tif"), ("CMYK", ".tif"), ("CMYK", ".jpg")])
def test_color_modes_and_color_spaces_read_as_their_colors(tmp_path, mode, suffix):
    color = (51, 51, 51) if mode == "LA" else (51, 102, 255)
    Image.new("RGB", (4, 2), color).convert(mode).save(tmp_path / f"x{suffix}")
    np.testing.assert_allclose(read_image(tmp_path / f"x{suffix}"), np.broadcast_to(np.divide(color, 255), (2, 4, 3)),
                               atol=0.02 if suffix == ".jpg" else 1e-6)


def test_int32_tiffs_read_alike_whatever_their_maximum(tmp_path):
    for top in (200, 300):
        tifffile.imwrite(tmp_path / f"max{top}.tif", np.int32([[0, top]]))
        assert read_image(tmp_path / f"max{top}.tif")[0, 1, 0] == pytest.approx(top / 65535)


def test_integers_beyond_16_bit_are_refused_and_percentiles_take_them(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", (RAMP * 100).astype(np.int32))
    with pytest.raises(DataError) as caught:
        read_image(tmp_path / "big.tif")
    assert str(caught.value) == (f"{tmp_path / 'big.tif'}: int32 values 0..99900 lie outside 0..65535, which fixed "
                                 "scaling reads as 16-bit; train with --normalize percentile")
    image = read_image(tmp_path / "big.tif", Reading("percentile"))
    assert image.min() == 0.0 and image.max() == 1.0


def test_float32_images_are_read_as_they_are_or_by_percentiles(tmp_path):
    tifffile.imwrite(tmp_path / "unit.tif", np.float32([[0.0, 0.5, 1.0]]))
    np.testing.assert_allclose(read_image(tmp_path / "unit.tif")[0, :, 1], [0.0, 0.5, 1.0])
    tifffile.imwrite(tmp_path / "deconvolved.tif", RAMP.astype(np.float32) * 3.5)
    with pytest.raises(DataError, match=r"deconvolved.tif: floating-point image with values 0..3.5e\+03; fixed "
                                        r"scaling takes floats in \[0, 1\]: train with --normalize percentile"):
        read_image(tmp_path / "deconvolved.tif")
    assert read_image(tmp_path / "deconvolved.tif", Reading("percentile")).max() == 1.0


def test_percentiles_are_csbdeeps_per_channel_and_a_flat_channel_is_zero():
    ramp = np.stack([RAMP, np.full_like(RAMP, 7)], axis=2).astype(np.uint16)
    low, high = np.percentile(RAMP, (1.0, 99.8))
    image = percentile_scaled(ramp)
    np.testing.assert_allclose(image[..., 0], np.clip((RAMP - low) / (high - low), 0, 1), rtol=1e-5, atol=1e-6)
    assert not image[..., 1].any()


def test_a_48_bit_rgb_tiff_keeps_its_low_byte(tmp_path):
    rgb = np.stack([RAMP * 65, RAMP * 3, RAMP + 1], axis=2).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb48.tif", rgb, photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "rgb48.tif"), rgb / 65535, rtol=1e-6)


def test_an_lzw_tiff_without_imagecodecs_reads_as_an_uncompressed_one(tmp_path):
    values = (RAMP * 60).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    tifffile.imwrite(tmp_path / "plain.tif", values)
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), read_image(tmp_path / "plain.tif"))


def test_the_tiff_orientation_tag_turns_the_image_as_exif_turns_a_png(tmp_path):
    values = RAMP[:8, :5].astype(np.uint8)
    tifffile.imwrite(tmp_path / "turned.tif", values, extratags=[(274, "H", 1, 6, True)])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(values).save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened)) / 255
    np.testing.assert_allclose(read_image(tmp_path / "turned.tif")[..., 0], expected, rtol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "turned.png")[..., 0], expected, rtol=1e-6)
    assert (read_header(tmp_path / "turned.tif").height, read_header(tmp_path / "turned.tif").width) == (5, 8)


# -- planes and channels: refused or chosen by name, never cut ---------------------------------------

def test_pages_z_and_series_are_refused_by_name(tmp_path):
    tifffile.imwrite(tmp_path / "stack.ome.tif", np.zeros((3, 5, 16, 16), np.uint16), metadata={"axes": "CZYX"})
    with pytest.raises(DataError) as caught:
        read_image(tmp_path / "stack.ome.tif")
    assert str(caught.value) == (f"{tmp_path / 'stack.ome.tif'}: 5 along Z (depth) (axes CZYX, shape 3x5x16x16); "
                                 "instseg segments one 2-D image per file: save one plane, or a projection, per file")
    with tifffile.TiffWriter(tmp_path / "two.tif") as writer:
        writer.write(np.zeros((16, 16), np.uint8))
        writer.write(np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"two.tif: holds 2 images \(16x16 YX, 8x8 YX\); instseg reads files of "
                                        "one image: save each as its own file"):
        read_image(tmp_path / "two.tif")


def test_channels_choose_the_networks_three_inputs(tmp_path):
    planes = np.stack([RAMP, RAMP * 2, RAMP * 3]).astype(np.uint16)[:2]
    tifffile.imwrite(tmp_path / "two.ome.tif", planes, metadata={"axes": "CYX"})
    path = tmp_path / "two.ome.tif"
    with pytest.raises(DataError) as caught:
        read_image(path)
    assert str(caught.value) == (f"{path}: 2 channels; choose the ones to use with --channels (e.g. --channels 0 "
                                 "for one channel, or --channels 0,1)")
    one = read_image(path, Reading(channels=(1,)))
    np.testing.assert_allclose(one, np.repeat(planes[1][..., None] / 65535, 3, axis=2), rtol=1e-6)
    pair = read_image(path, Reading(channels=(1, 0)))
    assert np.array_equal(pair[..., 0], one[..., 0]) and not pair[..., 2].any()
    with pytest.raises(DataError, match=r"two.ome.tif: --channels 2 asks for channel 2 but the file has 2 \(0..1\)"):
        read_image(path, Reading(channels=(2,)))


def test_rgba_tiffs_lose_their_alpha_and_grey_ones_repeat(tmp_path):
    rgba = np.dstack([np.full((4, 4, 3), 51, np.uint8), np.zeros((4, 4), np.uint8)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert read_header(tmp_path / "rgba.tif").mode == "RGBA"
    np.testing.assert_allclose(read_image(tmp_path / "rgba.tif"), 0.2, rtol=1e-6)


@pytest.mark.parametrize("text, expected", [("0", (0,)), ("2,1,0", (2, 1, 0)), (None, None), ("", None)])
def test_channels_parse(text, expected):
    assert parse_channels(text) == expected


@pytest.mark.parametrize("text", ["a", "0,1,2,3", "-1", "1.5"])
def test_bad_channels_name_the_option(text):
    with pytest.raises(ConfigError, match="--channels"):
        parse_channels(text)


def test_numpy_arrays_follow_the_rules_of_files(tmp_path):
    planes = np.stack([RAMP, RAMP * 60]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", planes, photometric="minisblack", metadata={"axes": "CYX"})
    for reading in (Reading(channels=(1,)), Reading("percentile", (1, 0))):
        np.testing.assert_array_equal(image_from_array(planes.transpose(1, 2, 0), reading),
                                      read_image(tmp_path / "two.tif", reading))
    with pytest.raises(DataError, match="image array: 2 channels; choose the ones to use with --channels"):
        image_from_array(planes.transpose(1, 2, 0))


# -- label maps --------------------------------------------------------------------------------------

def test_tiff_label_maps_hold_32_bit_ids_and_one_plane(tmp_path):
    ids = np.arange(16, dtype=np.uint32).reshape(4, 4) * 10_000
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    np.testing.assert_array_equal(read_label_map(tmp_path / "ids.tif"), ids)
    tifffile.imwrite(tmp_path / "float.tif", ids.astype(np.float32))
    with pytest.raises(DataError, match="float.tif: label map holds floating-point values"):
        read_label_map(tmp_path / "float.tif")
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((2, 4, 4), np.uint16), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match=r"pages.tif: 2 along Z \(depth\)"):
        read_label_map(tmp_path / "pages.tif")


def test_data_check_names_a_stack_among_the_images(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    tifffile.imwrite(images / "a.tif", np.zeros((3, 16, 16), np.uint16), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    tifffile.imwrite(images / "b.tif", (RAMP[:16, :16] * 60).astype(np.uint16))
    for name in "ab":
        write_label_map(masks / f"{name}.png", (RAMP[:16, :16] > 100).astype(np.uint16))
    report = check_dataset(f"folder:{tmp_path}")
    assert report.problems == [f"{images / 'a.tif'}: 3 along Z (depth) (axes ZYX, shape 3x16x16); instseg segments "
                               "one 2-D image per file: save one plane, or a projection, per file"]


def test_a_lone_surrogate_in_a_path_is_shown_escaped():
    assert display_path("nuclei\ud800.tif") == "nuclei\\ud800.tif"
    assert display_path(b"nuclei\xff.tif") == "nuclei\\xff.tif"


# -- the reading is recorded with the model ---------------------------------------------------------

def test_the_reading_round_trips_through_the_model_record_and_older_ones_read_by_dtype():
    config = TrainConfig(normalize="percentile", channels=(0,))
    record = ModelRecord.from_config(config, (0.5,) * 3, (0.25,) * 3)
    back = ModelRecord.from_payload(record.to_payload())
    assert Reading.of(back) == Reading("percentile", (0,)) == Reading.of(config)
    older = {k: v for k, v in record.to_payload().items() if k not in ("normalize", "channels")}
    assert Reading.of(ModelRecord.from_payload(older)) == FIXED
    with pytest.raises(CheckpointError, match="model.normalize"):
        ModelRecord.from_payload({**record.to_payload(), "normalize": "max"})


def test_the_reading_round_trips_through_onnx_metadata_and_older_files_read_by_dtype():
    info = ModelInfo(model="unet", backbone=None, instseg_version="0", plugins={}, exporter="legacy",
                     torch_version="2", opset=17, precision="fp32", exported="now", source="x", embedding_dim=8,
                     max_instances=20, image_size=32, multiple_of=8, static_size=None, dynamic_batch=True,
                     mean=(0.5,) * 3, std=(0.25,) * 3, normalize="percentile", channels=(2, 1))
    props = info.to_props()
    assert (props["instseg.normalize"], props["instseg.channels"]) == ("percentile", "[2, 1]")
    assert Reading.of(ModelInfo.from_props(props, "m.onnx")) == Reading("percentile", (2, 1))
    older = {k: v for k, v in props.items() if k not in ("instseg.normalize", "instseg.channels")}
    assert Reading.of(ModelInfo.from_props(older, "m.onnx")) == FIXED
    with pytest.raises(CheckpointError, match="m.onnx: metadata instseg.channels is \\[5, 5, 5, 5\\]"):
        ModelInfo.from_props({**props, "instseg.channels": "[5, 5, 5, 5]"}, "m.onnx")


@pytest.mark.parametrize("args, message", [
    (["--normalize", "max"], "Invalid value for '--normalize'"),
    (["--channels", "0,1,2,3"], "--channels 0,1,2,3: expected 1 to 3 channel indices from 0 to 65535, e.g. 0 (one "
                                "channel repeated) or 2,1,0"),
])
def test_training_refuses_a_bad_reading_before_it_starts(tmp_path, args, message):
    result = CliRunner().invoke(app, ["train", *args, "--epochs", "1", "--out", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert message in (result.output if result.exception is None or isinstance(result.exception, SystemExit)
                       else str(result.exception))
    assert not (tmp_path / "runs").exists()


# -- end to end: what training chose, prediction repeats ---------------------------------------------

def two_channel_folder(root) -> list:
    """A folder dataset of 2-channel OME-TIFFs: noise in channel 0, dim 12-bit discs in channel 1."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:32, :32]
    paths = []
    for i in range(4):
        labels = np.zeros((32, 32), np.uint16)
        for k, (cy, cx) in enumerate([(8 + i, 9), (22, 20 - i)], start=1):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = k
        planes = np.stack([rng.integers(0, 4000, (32, 32)), 200 + (labels > 0) * 3000]).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"n{i}.ome.tif", planes, metadata={"axes": "CYX"})
        write_label_map(root / "masks" / f"n{i}.ome.png", labels)
        paths.append(root / "images" / f"n{i}.ome.tif")
    return paths


def test_a_run_trained_on_one_channel_predicts_and_exports_reading_the_same_way(tmp_path):
    import json

    import instseg
    from instseg.exporters.onnx import ExportPlan, model_info, request_from_checkpoint
    from training_support import cli_args, tiny_config

    paths = two_channel_folder(tmp_path / "data")
    config = tiny_config(tmp_path / "runs", val_size=1)
    args = ["train", *cli_args(config), "--data", f"folder:{tmp_path / 'data'}", "--val-split", "0.25",
            "--channels", "1", "--normalize", "percentile", "--cluster", "kmeans"]
    cli = CliRunner()
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "run"
    saved = json.loads((run / "config.json").read_text())
    assert (saved["config"]["normalize"], saved["config"]["channels"]) == ("percentile", [1])
    assert (saved["model"]["normalize"], saved["model"]["channels"]) == ("percentile", [1])
    model = instseg.load(run, device="cpu")
    assert model.segment(paths[0]).shape == (32, 32)
    assert model.segment(tifffile.imread(paths[0]).transpose(1, 2, 0)).shape == (32, 32)  # an array, likewise
    result = cli.invoke(app, ["predict", str(run), str(paths[1]), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    request = request_from_checkpoint(run / "best.pt")
    plan = ExportPlan(exporter="legacy", dynamic_batch=True, static_size=None, multiple_of=1, shapes=())
    info = ModelInfo.from_props(model_info(request, plan).to_props(), "m.onnx")
    assert Reading.of(info) == Reading("percentile", (1,))
