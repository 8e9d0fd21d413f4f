"""The plugin as napari sees it: its manifest's widget, reader and sample data, in a viewer."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from PIL import Image as PILImage
from qtpy.QtCore import QTimer

from instseg.data.synthetic import render_plant
from instseg.io.writing import write_label_map
from napari_instseg._layers import instance_features, parse_object_size
from napari_instseg._reader import get_reader
from napari_instseg._widget import InstsegWidget

PLUGIN = "napari-instseg"
WAIT_MS = 30_000  # a worker's longest wait here; segmenting takes ~0.5 s on a 2-core CPU


@pytest.fixture
def errors():
    """The error notifications shown during a test (messages), and a check that none came
    with an exception attached (napari's traceback notification)."""
    start = len(notification_manager.records)
    shown: list[str] = []

    def messages() -> list[str]:
        new = notification_manager.records[start:]
        assert not [n for n in new if getattr(n, "exception", None) is not None], "a traceback was shown"
        shown[:] = [n.message for n in new if n.severity == NotificationSeverity.ERROR]
        return shown

    return messages


def dock_widget(viewer) -> InstsegWidget:
    """The widget as a user opens it: Plugins > instseg > Segment instances."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment instances")
    assert isinstance(widget, InstsegWidget)
    return widget


def load(widget: InstsegWidget, qtbot, path: Path | str) -> None:
    widget._model.value = str(path)
    widget.load_model()
    qtbot.waitUntil(lambda: widget._load.enabled, timeout=WAIT_MS)


def test_widget_segments_a_1024_image_while_the_viewer_keeps_running(make_napari_viewer, qtbot, run_dir,
                                                                    plant_1024, errors):
    viewer = make_napari_viewer()
    viewer.add_image(plant_1024, name="plant", rgb=True, scale=(0.5, 0.5))
    widget = dock_widget(viewer)
    load(widget, qtbot, run_dir)  # a run directory: its best.pt
    assert widget.predictor is not None and widget._where.value == f"{run_dir.name}: {widget.predictor.where}"
    assert widget._image.value is viewer.layers["plant"]

    # The worker finishes segmenting only after the viewer's event loop has ticked 5 times
    # meanwhile: were segmentation run in the main thread, no tick could happen (10 s, then fail).
    segmenting, ticked, ticks = threading.Event(), threading.Event(), []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: segmenting.is_set() and (ticks.append(1), len(ticks) >= 5 and ticked.set()))
    timer.start()
    real_segment = widget.predictor.segment
    waited: list[bool] = []

    def segment_while_viewer_ticks(*args, **kwargs):
        segmenting.set()
        labels = real_segment(*args, **kwargs)
        waited.append(ticked.wait(10))
        return labels

    widget.predictor.segment = segment_while_viewer_ticks
    widget.segment()
    assert not widget._segment.enabled  # busy while the worker runs
    qtbot.waitUntil(lambda: "plant labels" in viewer.layers, timeout=WAIT_MS)
    timer.stop()
    assert waited == [True], "the viewer's event loop did not run while instseg segmented"
    assert widget.worker.pbar.desc == "instseg: segmenting plant"  # napari's activity indicator

    layer = viewer.layers["plant labels"]
    assert layer.data.shape == (1024, 1024) and layer.data.dtype == np.int32
    assert tuple(layer.scale) == (0.5, 0.5)  # drawn over its image
    ids, counts = np.unique(layer.data[layer.data > 0], return_counts=True)
    assert len(ids) >= 2  # the all-foreground model splits the picture into several instances
    assert list(layer.features.columns) == ["index", "area_px"]
    assert layer.features["index"].tolist() == ids.tolist()
    assert layer.features["area_px"].tolist() == counts.tolist()
    qtbot.waitUntil(lambda: widget._segment.enabled, timeout=WAIT_MS)
    assert errors() == []


def test_loading_errors_are_one_line_notifications(make_napari_viewer, qtbot, tmp_path, run_dir, errors):
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "empty").mkdir()
    widget.load_model()  # nothing chosen
    cases = {
        tmp_path / "bad.pt": f"{tmp_path / 'bad.pt'}: not a checkpoint (not a PyTorch checkpoint archive)",
        tmp_path / "bad.onnx": f"{tmp_path / 'bad.onnx'}: not a loadable ONNX model (Protobuf parsing failed.)",
        tmp_path / "gone.pt": f"{tmp_path / 'gone.pt'}: no such checkpoint file or run directory",
        tmp_path / "empty": f"{tmp_path / 'empty'}: run directory holds no checkpoint (best.pt or last.pt)",
    }
    for path in cases:
        load(widget, qtbot, path)
    assert errors() == ["choose a model first: a run directory, a checkpoint (.pt) or an exported .onnx file",
                        *cases.values()]
    assert widget.predictor is None and widget._where.value == "no model loaded"

    load(widget, qtbot, run_dir / "best.pt")
    model = widget.predictor
    load(widget, qtbot, tmp_path / "bad.pt")
    assert widget.predictor is model  # a failed load keeps the model that was loaded


def test_segmenting_errors_are_one_line_notifications(make_napari_viewer, qtbot, run_dir, errors):
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    widget.segment()  # no model yet
    load(widget, qtbot, run_dir)
    widget.segment()  # no image yet
    viewer.add_image(np.zeros((3, 32, 32), np.uint8), name="stack")
    widget.segment()
    viewer.add_image(np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 100, name="counts")  # past 16 bits
    widget.segment()
    qtbot.waitUntil(lambda: widget._segment.enabled, timeout=WAIT_MS)
    widget._object_size.value = "-3"
    widget.segment()
    assert errors() == [
        "load a model first: a run directory, a checkpoint (.pt) or an exported .onnx file",
        "no image to segment: open or add an image layer first",
        "image 'stack' has 3 dimensions (3 x 32 x 32): instseg segments one 2-D picture (greyscale or RGB)",
        "image 'counts': image array: int64 values 0..102300 lie outside 0..65535, which fixed scaling reads as "
        "16-bit; train with --normalize percentile",
        "object size '-3': expected a number of pixels > 0, 'auto', or nothing (the run's own geometry)",
    ]
    assert [layer.name for layer in viewer.layers] == ["stack", "counts"]  # nothing added


def test_reader_round_trips_instseg_label_maps(make_napari_viewer, tmp_path, errors):
    labels = render_plant(0, 1, 96, split="test")[1]
    write_label_map(tmp_path / "plant1_label.png", labels)  # as `instseg predict` writes them
    PILImage.fromarray(labels.astype(np.uint16)).save(tmp_path / "plant2_label.tif")
    (tmp_path / "broken_label.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    viewer = make_napari_viewer()
    for name in ("plant1_label.png", "plant2_label.tif"):
        [layer] = viewer.open(tmp_path / name, plugin=PLUGIN)
        assert layer.name == Path(name).stem and layer.__class__.__name__ == "Labels"
        np.testing.assert_array_equal(layer.data, labels)
        assert layer.features["area_px"].tolist() == np.bincount(labels.ravel())[1:].tolist()
    assert viewer.open(tmp_path / "broken_label.png", plugin=PLUGIN) == []
    [message] = errors()
    assert message.startswith(f"{tmp_path / 'broken_label.png'}: ") and "\n" not in message
    assert len(viewer.layers) == 2


@pytest.mark.parametrize("path", ["plant.png", "plant_label.jpg", "labels.tif", "plant_overlay.png"])
def test_reader_leaves_other_files_to_other_readers(path):
    assert get_reader(path) is None and get_reader([path, "plant_label.png"]) is None


def test_sample_rosette_loads(make_napari_viewer):
    viewer = make_napari_viewer()
    image, truth = viewer.open_sample(PLUGIN, "rosette")
    assert image.name == "rosette" and image.rgb and image.data.shape == (512, 512, 3)
    assert truth.name == "rosette truth" and truth.data.shape == (512, 512)
    assert truth.features["index"].tolist() == list(range(1, int(truth.data.max()) + 1))


def test_features_and_object_size_rules():
    labels = np.array([[0, 3, 3], [0, 0, 7]], np.int32)
    assert {k: v.tolist() for k, v in instance_features(labels).items()} == {"index": [3, 7], "area_px": [2, 1]}
    assert instance_features(np.zeros((0, 0), np.int32))["index"].tolist() == []
    assert [parse_object_size(text) for text in ("", " AUTO ", "12.5")] == [None, "auto", 12.5]
