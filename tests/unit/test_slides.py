"""Whole slides (`io.slides`, `predict.slides`): TIFFs over the slide size read tile by tile from
disk and stitched in a band give the in-memory path's label map, in bounded memory; what a slide
cannot be predicted with is refused by name; `--max-pixels` lifts the decode limit of images
decoded whole. The slide size is lowered here so that small generated TIFFs are slides."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from data_fixtures import nuclei_image
from instseg import limits
from instseg.errors import ConfigError, DataError, OutputError
from instseg.io.images import read_image
from instseg.io.slides import Slide, check_max_pixels, max_pixels, slide_header
from instseg.predict import slides as slide_path
from instseg.predict.outputs import OutputOptions, predict_folder
from instseg.predict.pipeline import Prediction, Source, predict_sources
from instseg.predict.slides import refuse_coco
from instseg.predict.tiling import Stitcher, plan_tiles
from test_tiling import NucleiRunner

HEIGHT, WIDTH = 192, 320
TIF = OutputOptions(label_format="tif")


@pytest.fixture(autouse=True)
def small_slides(monkeypatch):
    """Every TIFF over 64 x 64 px is a slide."""
    monkeypatch.setattr(limits, "SLIDE_PIXELS", 64 * 64)


@pytest.fixture(scope="module")
def nuclei():
    """An 8-bit RGB picture of ~400 nuclei that encodes them (`NucleiRunner` reads them back)."""
    image, truth = nuclei_image(HEIGHT, WIDTH)
    return np.round(image * 255).astype(np.uint8), truth


def in_memory(stored: np.ndarray, runner: NucleiRunner) -> np.ndarray:
    [result] = predict_sources([Source(Path("x.png"), "x", stored.astype(np.float32) / 255)], runner)
    assert isinstance(result, Prediction)
    return result.labels


STORAGE = {"tiled": dict(tile=(64, 64), compression="zlib"), "striped": dict(rowsperstrip=8, compression="zlib"),
           "uncompressed": dict()}


@pytest.mark.parametrize("storage", STORAGE)
def test_a_slide_is_predicted_from_disk_as_the_in_memory_path_predicts_it(tmp_path, nuclei, storage):
    stored, truth = nuclei
    tifffile.imwrite(tmp_path / "slide.tif", stored, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
                     **STORAGE[storage])
    runner = NucleiRunner(tile=96, overlap=24)
    result = predict_folder([tmp_path / "slide.tif"], runner, tmp_path / "out", options=TIF)
    assert result.failures == []
    with tifffile.TiffFile(tmp_path / "out" / "slide_label.tif") as tif:
        labels, page = tif.asarray(), tif.pages.first
        assert page.is_tiled and page.dtype == np.uint32 and tif.shaped_metadata[0]["instseg.output"] == "label"
        assert page.tags["XResolution"].value == (20000, 1)  # 0.5 um pixels, as the slide's
    assert np.array_equal(labels, in_memory(stored, runner))
    assert result.instances == [int(truth.max())] == [len(np.unique(labels)) - 1]
    assert Image.open(tmp_path / "out" / "slide_overlay.png").size == (WIDTH, HEIGHT)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["slide_label.tif", "slide_overlay.png"]


def slide_peak(tmp_path: Path, height: int, width: int, monkeypatch) -> int:
    """numpy's peak bytes while predicting a height x width slide of red noise (no foreground:
    clustering is instant), every region read checked to be one tile."""
    noise = np.zeros((height, width, 3), np.uint8)
    noise[..., 0] = np.random.default_rng(0).integers(0, 256, (height, width))
    slide = write(tmp_path / f"slide{height}.tif", noise, tile=(128, 128), compression="zlib")
    regions = []
    read = Slide.read
    monkeypatch.setattr(Slide, "read", lambda self, *box: regions.append(box) or read(self, *box))
    tracemalloc.start()
    result = predict_folder([slide], NucleiRunner(tile=128, overlap=32), tmp_path / f"out{height}", options=TIF,
                            threads=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.failures == [] and len(regions) == len(plan_tiles(height, width, 128, 32))
    assert all(y1 - y0 <= 128 and x1 - x0 <= 128 for y0, y1, x0, x1 in regions)
    return peak


def test_a_slide_is_predicted_in_memory_that_does_not_grow_with_its_height(tmp_path, monkeypatch):
    """4x the rows, the same peak (a band of rows, a few tiles): a sixth of the decoded image
    (12 bytes a pixel) at 4096 x 512, and falling. The overlay is drawn at 128 px here."""
    monkeypatch.setattr(slide_path, "PREVIEW_SIDE", 128)
    short, tall = slide_peak(tmp_path, 1024, 512, monkeypatch), slide_peak(tmp_path, 4096, 512, monkeypatch)
    assert tall < 1.25 * short and tall < 4096 * 512 * 12 / 6


def test_a_slide_reads_as_the_whole_image_reads(tmp_path):
    """Intensities by `io.microscopy`'s rule (uint16 / 65535), grey repeated: as `read_image`."""
    grey = np.random.default_rng(0).integers(0, 65536, (200, 300), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=(32, 32), compression="zlib")
    with Slide(tmp_path / "grey.tif") as slide:
        region = slide.read(37, 150, 61, 290)
    with max_pixels(None):
        assert np.array_equal(region, read_image(tmp_path / "grey.tif")[37:150, 61:290])
    assert region.dtype == np.float32 and region.shape == (113, 229, 3)


def test_the_band_stitcher_gives_the_whole_image_stitcher_labels(nuclei):
    _, truth = nuclei
    whole, band, rows = Stitcher(HEIGHT, WIDTH), Stitcher(HEIGHT, WIDTH, rows=96), []
    for tile in plan_tiles(HEIGHT, WIDTH, 96, 24):
        whole.add(tile, truth[tile.box].copy())
        if tile.y0 > band.top:
            rows.append(band.release(tile.y0))
        band.add(tile, truth[tile.box].copy())
    rows.append(band.release(HEIGHT))
    assert np.array_equal(np.concatenate(rows), whole.labels)
    assert band.labels.shape == (96, WIDTH)


def write(path: Path, array: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, array, **kwargs)
    return path


def failure_of(tmp_path: Path, slide: Path, runner=None, object_size=None, **options) -> str:
    result = predict_folder([slide], runner or NucleiRunner(tile=64, overlap=16), tmp_path / "out",
                            options=OutputOptions(**{"label_format": "tif", **options}), object_size=object_size)
    assert len(result.failures) == 1 and not (tmp_path / "out" / f"{slide.stem}_label.tif").exists()
    return result.failures[0]


def test_what_a_slide_cannot_be_predicted_with_is_refused_by_name(tmp_path):
    slide = write(tmp_path / "s.tif", np.zeros((100, 120, 3), np.uint8))
    head = f"{slide}: 120x100 px is a slide, predicted tile by tile"
    assert failure_of(tmp_path, slide, label_format="png") == (
        f"{head}, its label map written as it goes, which only a TIFF can be: pass --label-format tif")
    assert failure_of(tmp_path, slide, panels=True, embeddings=True) == (
        f"{head}, and --panels, --embeddings need(s) the whole label map in memory: leave it out for slides")
    whole_images = NucleiRunner(tile=64, overlap=16, scale=None)
    # a run that resizes whole images reads a big TIFF whole, as before; one over the decode limit is refused
    assert predict_folder([slide], whole_images, tmp_path / "whole", options=TIF).failures == []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 10_000)
        assert failure_of(tmp_path, slide, whole_images) == (
            f"{head}, which needs a run at a fixed scale (this one resizes whole images to its working size): "
            "give --object-size PIXELS, the nuclei's size in this slide")
    sized = NucleiRunner(tile=64, overlap=16)
    sized.object_size = 8.0
    assert failure_of(tmp_path, slide, sized, object_size="auto") == (
        f"{head}, and --object-size auto segments whole images: give --object-size PIXELS")
    assert predict_folder([slide], sized, tmp_path / "sized", options=TIF, object_size=4).failures == []


def test_slides_of_more_than_one_plane_or_of_other_pixels_are_refused_by_name(tmp_path):
    stack = write(tmp_path / "stack.tif", np.zeros((3, 100, 120), np.uint16), photometric="minisblack")
    assert failure_of(tmp_path, stack) == (f"{stack}: 3 along Q (pages) (axes QYX, shape 3x100x120); instseg "
                                           "segments one 2-D image per file: save one plane, or a projection, per file")
    floats = write(tmp_path / "floats.tif", np.zeros((100, 120), np.float32), tile=(32, 32))
    assert failure_of(tmp_path, floats) == (f"{floats}: a slide of float32 pixels; tile-by-tile prediction reads "
                                            "uint8 or uint16 slides: convert it")
    one_strip = write(tmp_path / "strip.tif", np.zeros((100, 120), np.uint16), compression="zlib",
                      rowsperstrip=100)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("instseg.io.slides.MAX_SEGMENT_BYTES", 1000)
        assert failure_of(tmp_path, one_strip).startswith(f"{one_strip}: compressed in segments of 100x120 values, "
                                                          "over 0 MiB each decoded, so it cannot be read tile by tile")


def test_an_existing_label_file_is_not_replaced_unasked(tmp_path):
    """The run's plan covers slides: a clash stops it before anything is read."""
    slide = write(tmp_path / "s.tif", np.zeros((100, 120, 3), np.uint8))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s_label.tif").write_bytes(b"mine")
    with pytest.raises(OutputError, match="s_label.tif: exists and this run did not write it"):
        predict_folder([slide], NucleiRunner(tile=64, overlap=16), tmp_path / "out", options=TIF)
    assert (tmp_path / "out" / "s_label.tif").read_bytes() == b"mine"
    result = predict_folder([slide], NucleiRunner(tile=64, overlap=16), tmp_path / "out",
                            options=OutputOptions(label_format="tif", overwrite=True))
    assert result.failures == [] and tifffile.imread(tmp_path / "out" / "s_label.tif").shape == (100, 120)


def test_coco_results_are_refused_for_slides_before_anything_runs(tmp_path):
    slide = write(tmp_path / "s.tif", np.zeros((100, 120), np.uint8))
    small = write(tmp_path / "small.tif", np.zeros((40, 40), np.uint8))
    refuse_coco([small])
    with pytest.raises(ConfigError) as error:
        refuse_coco([small, slide])
    assert str(error.value) == (f"--coco: {slide} (120x100 px) is a slide, predicted tile by tile, and COCO results "
                                "are built from whole label maps in memory: leave out --coco, or predict the slides "
                                "in a run of their own")
    assert slide_header(small) is None and slide_header(tmp_path / "missing.tif") is None


def test_max_pixels_lifts_the_decode_limit_of_images_decoded_whole(tmp_path):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    default = Image.MAX_IMAGE_PIXELS
    with max_pixels(5000), pytest.raises(DataError, match=r"too large to decode safely .*; predict / infer "
                                                          r"--max-pixels raises the limit$"):
        read_image(tmp_path / "big.png")
    with max_pixels(10000):
        assert read_image(tmp_path / "big.png").shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == default
    with pytest.raises(ConfigError, match=r"^--max-pixels 0: must be between 1 and \d+ \(an image is decoded as 12 "
                                          r"bytes per pixel; this machine has \d+ GiB of memory\)$"):
        check_max_pixels(0)


ONNX = Path(__file__).parents[1] / "fixtures" / "layout-0.1" / "unet-w4.onnx"  # a 32 px instseg export


@pytest.fixture(scope="module")
def fixed_scale_onnx(tmp_path_factory) -> Path:
    """The fixture export with `instseg.scale` 1: a run at a fixed scale, predicted tile by tile."""
    import onnx

    model = onnx.load(ONNX)
    next(p for p in model.metadata_props if p.key == "instseg.scale").value = "1.0"
    path = tmp_path_factory.mktemp("model") / "scale1.onnx"
    onnx.save(model, path)
    return path


def infer(*args):
    from typer.testing import CliRunner

    from instseg.cli.main import app

    return CliRunner().invoke(app, ["infer", *map(str, args)])


def test_instseg_infer_predicts_a_slide_end_to_end(tmp_path, fixed_scale_onnx):
    grey = np.random.default_rng(1).integers(0, 4096, (100, 150), dtype=np.uint16)
    slide = write(tmp_path / "slide.ome.tif", grey, tile=(32, 32), compression="zlib")
    result = infer(fixed_scale_onnx, slide, "-o", tmp_path / "out", "--label-format", "tif", "--tile", 64,
                   "--tile-overlap", 16)
    assert result.exit_code == 0, result.output
    assert "time per image" not in result.output  # the stage times are the other images' (none here)
    with tifffile.TiffFile(tmp_path / "out" / "slide_label.tif") as tif:
        assert tif.series[0].shape == (100, 150) and tif.pages.first.dtype == np.uint32
    assert Image.open(tmp_path / "out" / "slide_overlay.png").size == (150, 100)
    refused = infer(fixed_scale_onnx, slide, "-o", tmp_path / "png", "--tile", 64)
    assert refused.exit_code == 1 and "pass --label-format tif" in refused.output
    assert not list((tmp_path / "png").glob("slide_*"))


def test_coco_and_max_pixels_are_checked_before_anything_is_predicted(tmp_path, fixed_scale_onnx):
    slide = write(tmp_path / "slide.tif", np.zeros((100, 150), np.uint8))
    coco = infer(fixed_scale_onnx, slide, "-o", tmp_path / "out", "--label-format", "tif", "--coco",
                 tmp_path / "out" / "results.json")
    assert isinstance(coco.exception, ConfigError) and str(coco.exception).startswith(f"--coco: {slide} (150x100 px)")
    assert not (tmp_path / "out").exists()
    bound = infer(fixed_scale_onnx, slide, "-o", tmp_path / "out", "--max-pixels", 0)
    assert isinstance(bound.exception, ConfigError) and str(bound.exception).startswith("--max-pixels 0: must be")


def test_a_damaged_slide_fails_by_name_and_leaves_no_file(tmp_path):
    slide = write(tmp_path / "s.tif", np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8),
                  tile=(64, 64), compression="zlib")
    data = bytearray(slide.read_bytes())
    data[len(data) // 2:len(data) // 2 + 2000] = bytes(2000)
    slide.write_bytes(bytes(data))
    assert failure_of(tmp_path, slide).startswith(f"{slide}: a tile of rows ")
    assert list((tmp_path / "out").iterdir()) == []  # no label file, no temporary one
