"""The ONNX Runtime runner of the prediction pipeline (see `instseg.predict.pipeline` for the protocol).

`instseg predict` runs a checkpoint through `predict.torch_runner.TorchRunner`; `instseg infer` runs an
exported file through `OnnxRunner` - the same pipeline, clustering and files around either.
Everything the runner needs comes from the file's metadata. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from instseg.errors import CheckpointError, DataError
from instseg.io.microscopy import Reading
from instseg.predict.tiling import default_tiling
from instseg.runtime.builds import ort, pybind  # one line, not a traceback, where onnxruntime is missing
from instseg.runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelInfo
from instseg.runtime.session import ProviderReport, open_session

RUN_ERRORS = (pybind.Fail, pybind.InvalidArgument, pybind.RuntimeException)


class OnnxRunner:
    """An exported model in an ONNX Runtime session: N x 3 x H x W float32 RGB in [0, 1] in,
    (semantic, embedding, count) numpy arrays out.

    A dynamic graph takes H and W that divide by `multiple_of` (the pipeline pads); a static
    one takes exactly `static_size` (the pipeline resizes), so its `multiple_of` is 1. A graph
    with a fixed batch runs one image at a time.
    """

    def __init__(self, session: ort.InferenceSession, info: ModelInfo, providers: ProviderReport,
                 path: str | os.PathLike) -> None:
        self.session = session
        self.info = info
        self.providers = providers
        self.path = Path(path)
        self.max_instances = info.max_instances
        self.image_size = info.image_size
        self.tile, self.tile_overlap = default_tiling(self.image_size)
        self.scale = info.scale
        self.object_size = info.object_size
        self.reading = Reading.of(info)  # channels, intensity scaling (absent from older files: by dtype)
        self.cluster = info.cluster
        self.static_size = info.static_size
        self.multiple_of = 1 if info.static_size is not None else info.multiple_of
        _check_signature(session, self.path)

    @classmethod
    def open(cls, path: str | os.PathLike, provider: str = "auto", threads: int = 0) -> "OnnxRunner":
        """Load an instseg ONNX file; errors name the file (see `open_session`, `ModelInfo.from_props`)."""
        session, providers = open_session(path, provider, threads)
        info = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        return cls(session, info, providers, path)

    @property
    def description(self) -> str:
        return f"{self.path} ({self.info.describe()})"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.info.dynamic_batch:
            return self._run(images)
        parts = [self._run(images[i:i + 1]) for i in range(len(images))]
        return tuple(np.concatenate(outputs) for outputs in zip(*parts))

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            return tuple(self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}))
        except RUN_ERRORS as exc:
            n, _, h, w = images.shape
            raise DataError(f"{self.path}: ONNX Runtime failed on {n} image(s) of {h}x{w} "
                            f"({str(exc).strip().splitlines()[0]})") from None


def _check_signature(session: ort.InferenceSession, path: Path) -> None:
    """The graph has the input and outputs the metadata promises."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise CheckpointError(f"{path}: graph takes {inputs} and gives {outputs}; an instseg model takes "
                              f"['{INPUT_NAME}'] and gives {list(OUTPUT_NAMES)}")
