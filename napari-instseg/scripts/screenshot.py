"""The docs' screenshot: a napari window with a synthetic plant, the instseg widget docked and
the Labels layer it made, taken the way a user would get there (the widget's own buttons).

    xvfb-run -s "-screen 0 1400x900x24" python napari-instseg/scripts/screenshot.py RUN \
        --out docs/images/napari.png

RUN: a run directory, checkpoint or .onnx file (the docs' one: `instseg train --model unet-cbam`).
It needs a screen with OpenGL (Xvfb gives one through Mesa); Qt's offscreen platform draws no canvas.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from instseg.data.synthetic import render_plant
from instseg.io.writing import write_rgb
from napari_instseg._widget import InstsegWidget

WINDOW = (1400, 900)  # the Xvfb screen above


def wait_until(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Run Qt's event loop until `done()` (the widget's workers report through it)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshot: gave up waiting for {what} after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float) -> None:
    """Run Qt's event loop for `seconds` (redraws, layout)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def largest_instance_center(labels: np.ndarray) -> tuple[float, float]:
    """A pixel of the largest instance, nearest its centre of mass."""
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    ys, xs = np.nonzero(labels == largest)
    nearest = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(ys[nearest]), float(xs[nearest])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory, checkpoint (.pt) or .onnx file")
    parser.add_argument("--out", default="docs/images/napari.png")
    parser.add_argument("--size", type=int, default=512, help="the synthetic plant's side in pixels")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari + instseg", show=True)
    viewer.window.resize(*WINDOW)
    viewer.add_image(render_plant(0, 3, args.size, split="test")[0], name="plant", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-instseg", "Segment instances")
    assert isinstance(widget, InstsegWidget)
    widget._model.value = args.model
    widget.load_model()
    wait_until(lambda: widget.predictor is not None, "the model to load")
    widget.segment()
    wait_until(lambda: "plant labels" in viewer.layers and widget._segment.enabled, "the segmentation")
    labels = viewer.layers["plant labels"]
    labels.opacity = 0.6
    viewer.layers.selection.active = labels
    viewer.reset_view()
    viewer.cursor.position = largest_instance_center(labels.data)  # the status bar shows its features
    settle(0.5)  # let the canvas draw the new layer before grabbing the window
    picture = viewer.screenshot(canvas_only=False, flash=False)
    write_rgb(args.out, np.ascontiguousarray(picture[..., :3]))
    print(f"{args.out}: {picture.shape[1]} x {picture.shape[0]}, {int(labels.data.max())} instances")
    viewer.close()


if __name__ == "__main__":
    main()
