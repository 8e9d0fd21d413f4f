"""Issue 25, the output side: label maps as PNG or TIFF (32-bit above 65535 ids, with the input's
pixel size), ImageJ ROI zips and QuPath GeoJSON read back and rasterised against the label map,
OME-TIFF names, TIFF label folders and `--pred-suffix` / `--gt-suffix` for scoring, and COCO
results whose geometry is checked before pycocotools sees it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image
from skimage.draw import polygon as fill_polygon
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.errors import ConfigError, DataError, MissingDependencyError
from instseg.io import annotations
from instseg.io.coco_results import read_detections
from instseg.io.images import read_label_map
from instseg.io.writing import prediction_output_kind, read_pixel_size, write_label_map, write_rgb
from instseg.io.inputs import gather_inputs, label_files, match_key, output_names, safe_name
from instseg.predict.outputs import OutputOptions, ground_truth_files, predict_folder, write_prediction
from instseg.predict.pipeline import Prediction
from predict_support import CodeRunner, leaf_image, write_images

cli = CliRunner()
ONNX = Path(__file__).parents[1] / "fixtures" / "layout-0.1" / "unet-w4.onnx"  # a 32 px instseg export


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


def blobs(h: int = 60, w: int = 80) -> np.ndarray:
    """A label map of a disc, a rectangle, an L shape and a one-pixel instance, with id 3 unused."""
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 < 12 ** 2] = 1
    labels[35:55, 40:75] = 2
    labels[5:30, 50:56] = 4
    labels[24:30, 56:70] = 4
    labels[50, 5] = 5
    return labels


def prediction_of(labels: np.ndarray, path: Path) -> Prediction:
    image = np.zeros((*labels.shape, 3), np.float32)
    probability = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    return Prediction(path, path.stem, image, labels, 0.0, None, None, 0, probability)


def rasterised(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A polygon in corner-origin pixel coordinates (x, y) filled at pixel centres."""
    mask = np.zeros(shape, bool)
    rows, cols = fill_polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape)
    mask[rows, cols] = True
    return mask


def micrometres(path: Path) -> tuple[float, float] | None:
    size = read_pixel_size(path)
    return None if size is None else (size.x, size.y)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


# -- label maps: PNG up to 65535 ids, TIFF beyond, with the pixel size ----------------------------


def test_label_maps_above_65535_ids_are_uint32_tiff_and_refused_as_png_naming_the_option(tmp_path):
    labels = np.arange(300 * 300, dtype=np.int64).reshape(300, 300)  # ids up to 89999
    with pytest.raises(DataError) as error:
        write_label_map(tmp_path / "big_label.png", labels)
    assert str(error.value) == (f"{tmp_path / 'big_label.png'}: instance ids reach 89999, more than a 16-bit PNG "
                                "holds (65535); pass --label-format tif (a 32-bit TIFF)")
    assert not list(tmp_path.iterdir())
    write_label_map(tmp_path / "big_label.tif", labels, output="label")
    stored = tifffile.imread(tmp_path / "big_label.tif")
    assert stored.dtype == np.uint32 and np.array_equal(stored, labels)
    assert np.array_equal(read_label_map(tmp_path / "big_label.tif"), labels)
    assert prediction_output_kind(tmp_path / "big_label.tif") == "label"
    write_label_map(tmp_path / "small_label.tif", blobs())
    assert tifffile.imread(tmp_path / "small_label.tif").dtype == np.uint16  # Fiji's and QuPath's label type


def test_a_prediction_with_too_many_ids_for_png_writes_nothing(tmp_path):
    labels = np.arange(300 * 300, dtype=np.int32).reshape(300, 300)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"slide_label\.png: instance ids reach 89999, .* pass --label-format tif"):
        write_prediction(prediction_of(labels, tmp_path / "slide.png"), tmp_path / "out", OutputOptions(overlay=True))
    assert not list((tmp_path / "out").iterdir())  # refused before the overlay was drawn or anything written
    written = write_prediction(prediction_of(labels, tmp_path / "slide.png"), tmp_path / "out",
                               OutputOptions(overlay=False, label_format="tif"))
    assert [p.name for p in written] == ["slide_label.tif"]


def _rgb_leaf(seed: int = 0) -> np.ndarray:
    image, _ = leaf_image(40, 48, seed)
    return np.round(image * 255).astype(np.uint8)


def _imagej_tiff(path: Path) -> None:
    tifffile.imwrite(path, _rgb_leaf(), imagej=True, photometric="rgb", resolution=(1 / 0.325, 1 / 0.5),
                     metadata={"unit": "um"})


def _imagej_escaped_micron_tiff(path: Path) -> None:
    """ImageJ's own spelling of µm in its description: a backslash escape."""
    tifffile.imwrite(path, _rgb_leaf(), imagej=True, photometric="rgb", resolution=(1 / 0.325, 1 / 0.5),
                     metadata={"unit": "\\u00B5m"})


def _ome_tiff(path: Path) -> None:
    tifffile.imwrite(path, _rgb_leaf(), ome=True, photometric="rgb",
                     metadata={"PhysicalSizeX": 0.325, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm"})


def _centimetre_tiff(path: Path) -> None:
    tifffile.imwrite(path, _rgb_leaf(), photometric="rgb", resolution=(1e4 / 0.325, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")


def _dpi_png(path: Path) -> None:
    Image.fromarray(_rgb_leaf()).save(path, dpi=(25400 / 0.325, 25400 / 0.5))


@pytest.mark.parametrize("write, name", [(_imagej_tiff, "a.tif"), (_imagej_escaped_micron_tiff, "a.tif"),
                                         (_ome_tiff, "a.ome.tif"), (_centimetre_tiff, "a.tiff"), (_dpi_png, "a.png")])
def test_a_label_tiff_keeps_the_input_s_pixel_size(tmp_path, write, name):
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / name)
    assert micrometres(tmp_path / "in" / name) == pytest.approx((0.325, 0.5), rel=1e-3)
    result = predict_folder(gather_inputs([tmp_path / "in"]), CodeRunner(), tmp_path / "out",
                            options=OutputOptions(overlay=False, label_format="tif"))
    assert result.failures == [] and result.instances == [4]
    label = tmp_path / "out" / "a_label.tif"  # a.ome.tif -> a_label.tif, not a.ome_label.tif
    assert micrometres(label) == pytest.approx((0.325, 0.5), rel=1e-3)
    with tifffile.TiffFile(label) as tif:  # what Fiji reads: resolution tags in centimetres
        assert tif.pages.first.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER


def test_inputs_without_a_pixel_size_get_a_tiff_without_one(tmp_path):
    write_rgb(tmp_path / "plain.png", _rgb_leaf())
    assert read_pixel_size(tmp_path / "plain.png") is None
    tifffile.imwrite(tmp_path / "none.tif", _rgb_leaf(), photometric="rgb", resolution=(1, 1), resolutionunit="NONE")
    assert read_pixel_size(tmp_path / "none.tif") is None
    write_label_map(tmp_path / "l.tif", blobs(), pixel_size=None)
    assert read_pixel_size(tmp_path / "l.tif") is None


def test_ome_tiff_names_lose_their_ome_and_other_names_keep_theirs():
    assert safe_name("/data/x.ome.tif") == safe_name("x.OME.TIFF") == "x"
    assert safe_name("x.ome.png") == "x.ome"  # not an OME-TIFF
    assert output_names([Path("a/x.ome.tif"), Path("b/x.tif")]) == ["x", "x-2"]
    assert match_key("x.ome.tif") == match_key("x_label.tif") == "x"


# -- outlines: ImageJ ROI zip and QuPath GeoJSON, read back ----------------------------------------


def test_imagej_rois_read_back_and_fill_their_instances(tmp_path):
    labels = blobs()
    (tmp_path / "rois.zip").write_bytes(annotations.imagej_rois(annotations.outlines(labels)))
    rois = roifile.roiread(tmp_path / "rois.zip")
    assert [roi.name for roi in rois] == ["1", "2", "4", "5"]
    assert all(roi.roitype == roifile.ROI_TYPE.POLYGON for roi in rois)
    for roi in rois[:3]:
        assert iou(rasterised(roi.coordinates(), labels.shape), labels == int(roi.name)) > 0.9, roi.name


def test_qupath_geojson_is_one_scored_polygon_per_instance_that_fills_it():
    labels = blobs()
    scores = np.array([0.0, 0.9, 0.8, 0.0, 0.7, 0.6])
    collection = json.loads(annotations.qupath_geojson(annotations.outlines(labels), labels, scores))
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["properties"]["id"] for f in features] == [1, 2, 4, 5]
    for feature in features:
        index, ring = feature["properties"]["id"], np.asarray(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and np.array_equal(ring[0], ring[-1])  # a closed ring
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["score"] == scores[index]
        assert feature["properties"]["area"] == int((labels == index).sum())
        if index != 5:  # one pixel: a diamond through its edges' midpoints
            assert iou(rasterised(ring, labels.shape), labels == index) > 0.9, index


def test_predict_folder_writes_every_format_and_skip_existing_knows_them(tmp_path):
    write_images(tmp_path / "in", [(48, 64), (40, 40)])
    inputs = gather_inputs([tmp_path / "in"])
    options = OutputOptions(label_format="tif", rois=True, geojson=True)
    first = predict_folder(inputs, CodeRunner(), tmp_path / "out", options=options)
    assert first.failures == [] and len(first.instances) == 2
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["plant000_rgb.geojson", "plant000_rgb_label.tif", "plant000_rgb_overlay.png",
                     "plant000_rgb_rois.zip", "plant001_rgb.geojson", "plant001_rgb_label.tif",
                     "plant001_rgb_overlay.png", "plant001_rgb_rois.zip"]
    label = read_label_map(tmp_path / "out" / "plant000_rgb_label.tif")
    assert len(roifile.roiread(tmp_path / "out" / "plant000_rgb_rois.zip")) == label.max()
    again = predict_folder(inputs, CodeRunner(), tmp_path / "out",
                           options=OutputOptions(label_format="tif", rois=True, geojson=True, skip_existing=True))
    assert again.done == inputs and again.instances == []
    cut = tmp_path / "out" / "plant001_rgb_label.tif"
    cut.write_bytes(cut.read_bytes()[:-20])  # cut short by a power cut: redone, and replaced
    again = predict_folder(inputs, CodeRunner(), tmp_path / "out",
                           options=OutputOptions(label_format="tif", rois=True, geojson=True, skip_existing=True))
    assert again.done == inputs[:1] and len(again.instances) == 1
    assert read_label_map(cut).max() == again.instances[0]


def test_outlines_without_their_packages_are_refused_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "roifile", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(MissingDependencyError) as error:
        OutputOptions(rois=True)
    assert str(error.value) == "--rois needs the roifile package: pip install \"instseg[fiji]\""
    OutputOptions(geojson=True)  # scikit-image is there


def test_infer_writes_tiff_rois_and_geojson_end_to_end(tmp_path):
    (tmp_path / "in").mkdir(), (tmp_path / "gt").mkdir()
    _imagej_tiff(tmp_path / "in" / "cells.ome.tif")
    write_label_map(tmp_path / "gt" / "cells_masks.tif", blobs()[:40, :48])
    result = invoke("infer", ONNX, tmp_path / "in", "--out", tmp_path / "out", "--label-format", "tif", "--rois",
                    "--geojson", "--no-overlay", "--panels", "--gt", tmp_path / "gt", "--gt-suffix", "_masks")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.geojson", "cells_label.tif",
                                                                    "cells_panel.png", "cells_rois.zip"]
    assert "cells.ome.tif is written as cells_label.tif" in " ".join(result.output.split())
    labels = read_label_map(tmp_path / "out" / "cells_label.tif")
    features = json.loads((tmp_path / "out" / "cells.geojson").read_text())["features"]
    assert len(features) == len(np.unique(labels[labels > 0]))
    assert micrometres(tmp_path / "out" / "cells_label.tif") == pytest.approx((0.325, 0.5), rel=1e-3)


# -- scoring: TIFF label folders and another tool's suffixes ---------------------------------------


def _tool_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Cellpose-style predictions (x_cp_masks.png) and TIFF ground truth (x_masks.tif)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    labels = blobs()
    for name in ("a", "b"):
        write_label_map(pred / f"{name}_cp_masks.png", labels)
        write_label_map(gt / f"{name}_masks.tif", labels)
    write_rgb(pred / "a_cp_outlines.png", np.zeros((4, 4, 3), np.uint8))  # another of the tool's files
    return pred, gt


def test_label_folders_take_tiff_and_a_suffix(tmp_path):
    pred, gt = _tool_folders(tmp_path)
    assert label_files(pred, "_cp_masks") == {"a": pred / "a_cp_masks.png", "b": pred / "b_cp_masks.png"}
    assert label_files(gt, "_masks") == {"a": gt / "a_masks.tif", "b": gt / "b_masks.tif"}
    with pytest.raises(DataError) as error:
        label_files(gt, "_label")
    assert str(error.value) == f"{gt}: folder holds no label maps ending in _label (.png, .tif, .tiff)"


def test_evaluate_scores_another_tool_s_masks_against_tiff_ground_truth(tmp_path):
    pred, gt = _tool_folders(tmp_path)
    result = invoke("evaluate", "--pred", pred, "--gt", gt, "--pred-suffix", "_cp_masks", "--gt-suffix", "_masks")
    assert result.exit_code == 0, result.output
    metrics = json.loads((pred / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["metrics"]["sbd"]["mean"] == 1.0
    assert (metrics["pred_suffix"], metrics["gt_suffix"]) == ("_cp_masks", "_masks")


@pytest.mark.parametrize("args, message", [
    (["--pred-suffix", "../x"], "--pred-suffix '../x': expected the end of a file stem, such as _cp_masks "
                                "(letters, digits, '.', '-' and '_')"),
    (["--gt-suffix", ""], "--gt-suffix '': expected the end of a file stem, such as _cp_masks "
                          "(letters, digits, '.', '-' and '_')"),
])
def test_evaluate_refuses_a_suffix_that_cannot_end_a_stem(tmp_path, args, message):
    pred, gt = _tool_folders(tmp_path)
    result = invoke("evaluate", "--pred", pred, "--gt", gt, *args)
    assert isinstance(result.exception, ConfigError) and str(result.exception) == message


def test_a_suffix_without_folders_is_refused(tmp_path):
    result = invoke("evaluate", ONNX, "--pred-suffix", "_cp_masks")
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == ("--pred-suffix picks files in --pred / --gt folders: give it with "
                                     "--pred DIR --gt DIR")


def test_infer_refuses_a_gt_suffix_without_a_gt_folder_before_predicting(tmp_path):
    write_images(tmp_path / "in", [(40, 40)])
    result = invoke("infer", ONNX, tmp_path / "in", "--out", tmp_path / "out", "--gt-suffix", "_masks")
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "--gt-suffix picks files in a --gt folder: give --gt DIR with it"
    assert not (tmp_path / "out").exists()


def test_predict_gt_takes_a_tiff_folder_and_its_suffix(tmp_path):
    truth = write_images(tmp_path / "in", [(48, 64)])
    (tmp_path / "gt").mkdir()
    write_label_map(tmp_path / "gt" / "plant000_masks.tif", truth["plant000"])
    options = OutputOptions(overlay=False, panels=True, gt_files=ground_truth_files(tmp_path / "gt", "_masks"))
    assert set(options.gt_files) == {"plant000"}
    result = predict_folder(gather_inputs([tmp_path / "in"]), CodeRunner(), tmp_path / "out", options=options)
    assert result.failures == [] and (tmp_path / "out" / "plant000_rgb_panel.png").is_file()


# -- COCO results: geometry checked before pycocotools ---------------------------------------------


def test_a_results_file_s_segmentation_is_checked_before_pycocotools(tmp_path):
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 10}]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "score": 0.5, "segmentation": [[0, 0, 5e8, 0, 5e8, 5e8]]}]))
    with pytest.raises(DataError) as error:
        read_detections(results, gt)
    assert str(error.value) == (f"{results}: detection 0: polygon point (500000000.0, 0) lies more than an image "
                                "side outside the 10x8 image")
    results.write_text(json.dumps([{"image_id": 1, "score": 0.5, "segmentation": {"size": [8, 10], "counts": "0"}}]))
    with pytest.raises(DataError, match=r"detection 0: compressed RLE runs cover 0 pixels"):
        read_detections(results, gt)
