"""The dock widget: load an instseg model, segment an Image layer, add its Labels layer.

Loading (torch is imported then) and segmenting both run in napari worker threads, with
napari's activity indicator, so the viewer stays responsive. A user error (a file that is
not a model, an image instseg cannot take) comes back from the worker as its one-line
message and is shown with `show_error`; napari would show any exception raised in a worker
with its traceback, which stays for real defects.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFileDialog

import instseg
from instseg.errors import InstsegError
from napari_instseg._layers import image_data, instance_features, labels_name, parse_object_size

MODEL_FILTER = "instseg models (*.pt *.onnx);;All files (*)"
NO_MODEL = "no model loaded"


@dataclass(frozen=True)
class Outcome:
    """What a worker returns: its value, or the one-line message of the user error it met."""

    value: Any = None
    error: str | None = None


def attempt(action: Callable[[], Any], context: str = "") -> Outcome:
    """Run `action` (in a worker thread), turning an instseg user error into its message."""
    try:
        return Outcome(value=action())
    except InstsegError as exc:
        return Outcome(error=f"{context}{exc}")


def segment_image(predictor: "instseg.Predictor", data: Any,
                  object_size: float | str | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The label map of one image and its features table, made in the worker thread (a lazy
    layer's pixels are read there too)."""
    labels = predictor.segment(np.asarray(data), object_size=object_size)
    return labels, instance_features(labels)


class InstsegWidget(Container):
    """Model picker (file or run folder), the device in use, an image choice, and Segment."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.predictor: instseg.Predictor | None = None
        self.worker: Any = None  # the running (or last) worker, for tests and scripts
        self._model = FileEdit(label="model", mode="r", filter=MODEL_FILTER,
                               tooltip="a checkpoint (.pt), an exported .onnx file, or a run directory")
        self._folder = PushButton(text="Run folder…", tooltip="choose a run directory written by instseg train")
        self._load = PushButton(text="Load model")
        self._where = Label(value=NO_MODEL, tooltip="the device or ONNX Runtime provider in use")
        self._image = ComboBox(label="image", choices=self._image_layers)
        self._object_size = LineEdit(label="object size", tooltip="a typical object's size in pixels, 'auto', "
                                     "or empty for the run's own geometry")
        self._segment = PushButton(text="Segment")
        super().__init__(widgets=[self._model, self._folder, self._load, self._where, self._image,
                                  self._object_size, self._segment])
        self._where.native.setWordWrap(True)
        self._folder.changed.connect(self._choose_folder)
        self._load.changed.connect(self.load_model)
        self._segment.changed.connect(self.segment)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            event.connect(self._image.reset_choices)
        viewer.layers.selection.events.active.connect(self._follow_active_layer)

    def _image_layers(self, _: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _follow_active_layer(self, event: Any) -> None:
        """Clicking an image in the layer list makes it the one to segment."""
        if isinstance(event.value, Image) and event.value in self._image.choices:
            self._image.value = event.value

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "instseg run directory")
        if folder:
            self._model.value = folder

    def _busy(self, busy: bool) -> None:
        for button in (self._load, self._segment):
            button.enabled = not busy

    def _run(self, action: Callable[[], Any], context: str, description: str,
             on_value: Callable[[Any], None]) -> None:
        """`action` in a worker thread with napari's progress indicator; `on_value` gets its
        value back in the main thread, a user error becomes a one-line notification."""
        def returned(outcome: Outcome) -> None:
            if outcome.error is not None:
                show_error(outcome.error)
            else:
                on_value(outcome.value)

        self._busy(True)
        self.worker = thread_worker(attempt, progress={"desc": description})(action, context)
        self.worker.returned.connect(returned)
        self.worker.finished.connect(lambda: self._busy(False))
        self.worker.start()

    def load_model(self) -> None:
        """Load the chosen run directory, checkpoint or .onnx file through `instseg.load`."""
        path = self._model.line_edit.value.strip()
        if not path:
            show_error("choose a model first: a run directory, a checkpoint (.pt) or an exported .onnx file")
            return
        self._run(lambda: instseg.load(path), "", f"instseg: loading {Path(path).name}", self._loaded)

    def _loaded(self, predictor: "instseg.Predictor") -> None:
        self.predictor = predictor
        self._where.value = f"{Path(predictor.path).name}: {predictor.where}"
        self._where.tooltip = predictor.description

    def segment(self) -> None:
        """Segment the chosen image in a worker thread; its Labels layer is added when done."""
        layer = self._image.value
        if self.predictor is None:
            show_error("load a model first: a run directory, a checkpoint (.pt) or an exported .onnx file")
            return
        if layer is None:
            show_error("no image to segment: open or add an image layer first")
            return
        try:
            data = image_data(layer)
            object_size = parse_object_size(self._object_size.value)
        except InstsegError as exc:
            show_error(str(exc))
            return
        predictor, name = self.predictor, layer.name
        placement = {"scale": layer.scale, "translate": layer.translate}
        self._run(lambda: segment_image(predictor, data, object_size), f"image '{name}': ",
                  f"instseg: segmenting {name}", lambda result: self._add_labels(name, placement, *result))

    def _add_labels(self, image_name: str, placement: dict[str, Any], labels: np.ndarray,
                    features: dict[str, np.ndarray]) -> None:
        self._viewer.add_labels(labels, name=labels_name(image_name), features=features, **placement)
