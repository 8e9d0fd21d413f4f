"""napari-instseg: instseg's models in napari.

- a dock widget (`InstsegWidget`): load a run directory, checkpoint or `.onnx` file with
  `instseg.load`, segment an Image layer in a worker thread, get a Labels layer with
  per-instance features;
- a reader for instseg's label outputs (`*_label.png`, `*_label.tif`);
- sample data: a synthetic rosette and its leaves.

napari finds them through the manifest `napari.yaml` (entry point `napari.manifest`).
"""

__version__ = "0.1.0"
