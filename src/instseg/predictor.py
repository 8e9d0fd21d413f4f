"""One object for a trained model: `instseg.load(path)` -> `Predictor`.

    model = instseg.load("runs/unet-cbam-...")     # a run directory, a checkpoint or an .onnx file
    labels = model.segment(image)                 # a numpy array or an image file -> H x W label map
    model.predict_folder("photos/", out="predictions")
    model.evaluate("cvppp:PATH/A1", val_list="splits/cvppp_a1_val.txt")

A checkpoint runs with PyTorch (`predict.torch_runner`), an `.onnx` file with ONNX Runtime
(`runtime`), through the same prediction pipeline: `instseg predict`, `infer` and `evaluate`
call exactly these methods. Importing this module imports no torch; an ONNX predictor's
`segment` and `predict_folder` never do (`evaluate` builds datasets, which need torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from instseg.errors import ConfigError, DataError
from instseg.instances.clustering import ClusterParams
from instseg.io.images import image_from_array, read_image
from instseg.io.inputs import gather_inputs
from instseg.predict.pipeline import Failure, Prediction, Runner, Source
from instseg.predict.sizing import predict_sized
from instseg.predict.tiling import geometry, set_tiling

if TYPE_CHECKING:
    from instseg.metrics.reports import Report
    from instseg.predict.outputs import FolderResult


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


@dataclass
class Predictor:
    """A trained model and the runner that executes it (PyTorch or ONNX Runtime)."""

    runner: Runner
    path: str  # what was loaded
    where: str  # the device or ONNX Runtime provider really in use, in words
    config: Mapping[str, Any]  # the run's training options (empty for an ONNX file)

    @property
    def description(self) -> str:
        return f"{self.runner.description} on {self.where}"

    @property
    def geometry(self) -> str:
        """How images are sized for the network (working size or fixed scale, tiles)."""
        return geometry(self.runner)

    def cluster_params(self, cluster: Mapping[str, Any] | None = None) -> ClusterParams:
        """The model's clustering defaults changed by `cluster` (ClusterParams fields; None keeps)."""
        return self.runner.cluster.override(**(cluster or {}))

    def describe_object_size(self, object_size: float | str | None) -> str:
        """What `object_size` does to this model's inputs, in one line ("" for None)."""
        from instseg.predict.sizing import describe

        return describe(self.runner, object_size)

    def set_tiling(self, tile: int | None = None, tile_overlap: int | None = None) -> None:
        """Tiles for runs at a fixed scale (None keeps the model's defaults)."""
        set_tiling(self.runner, tile, tile_overlap)

    def segment(self, image: np.ndarray | str | os.PathLike, *, cluster: Mapping[str, Any] | None = None,
                object_size: float | str | None = None) -> np.ndarray:
        """An instance label map (H x W int32, 0 = background) for one image: a numpy array
        (H x W or H x W x C; uint8, uint16 or float in [0, 1]) or an image file. `object_size`:
        its objects' size in pixels, or "auto" (`predict.sizing`); None: the run's geometry."""
        if isinstance(image, np.ndarray):
            source = Source(Path("<array>"), "array", image_from_array(image, self.runner.reading))
        else:
            source = Source(Path(image), Path(image).stem, read_image(image, self.runner.reading))
        result = next(predict_sized([source], self.runner, self.cluster_params(cluster), 1, object_size))
        if isinstance(result, Failure):
            raise DataError(result.message)
        return result.labels

    def predict_folder(self, inputs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, *,
                       cluster: Mapping[str, Any] | None = None, batch_size: int = 4, overlay: bool = True,
                       panels: bool = False, embeddings: bool = False, gt: str | os.PathLike | None = None,
                       overwrite: bool = False, skip_existing: bool = False, threads: int | None = None,
                       object_size: float | str | None = None, fsync: bool = False, shard: str | None = None,
                       label_format: str = "png", rois: bool = False, geojson: bool = False,
                       gt_suffix: str | None = None, max_pixels: int | None = None,
                       on_result: Callable[[Prediction | Failure], None] | None = None) -> "FolderResult":
        """Label map (+ overlay, panels, embedding pictures) per image of `inputs` (files,
        folders, globs, or a list of them) written to the folder `out`; what `instseg predict`
        and `instseg infer` do. `label_format` "png" or "tif" (16- or 32-bit, with the input's
        pixel size); `rois`, `geojson`: the instances' outlines as an ImageJ ROI zip and a QuPath
        GeoJSON file; `gt_suffix`: the ending of the `gt` folder's file stems that names are
        matched without; `max_pixels`: images decoded whole may have this many pixels (default:
        Pillow's decompression-bomb limit; `io.slides.max_pixels`; TIFF slides are read tile by tile,
        `predict.slides`). Existing outputs are replaced only with `overwrite`, inputs never;
        `threads` per CPU stage are at most the available CPUs; `fsync`: every file, not the
        folder once per batch; `shard` "K/N": only the K-th of N parts of the inputs, which
        copies given the other parts may write into `out` at the same time
        (`predict.outputs.predict_folder`)."""
        from instseg.io.inputs import shard as take_shard
        from instseg.io.inputs import shard_spec
        from instseg.io.slides import max_pixels as decode_limit
        from instseg.predict.outputs import OutputOptions, ground_truth_files, predict_folder

        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
        paths = inputs if isinstance(inputs, list) and all(isinstance(p, Path) for p in inputs) \
            else gather_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
        part = shard_spec(shard)
        if part is not None:
            paths = take_shard(paths, *part)
        options = OutputOptions(overlay=overlay, panels=panels, embeddings=embeddings,
                                gt_files=ground_truth_files(None if gt is None else Path(gt), gt_suffix),
                                overwrite=overwrite, skip_existing=skip_existing, fsync=fsync,
                                label_format=label_format, rois=rois, geojson=geojson)
        with decode_limit(max_pixels):
            return predict_folder(paths, self.runner, Path(out), self.cluster_params(cluster), batch_size, options,
                                  on_result=on_result, threads=threads, object_size=object_size, shard=part)

    def evaluate(self, data: str | None = None, *, val_list: str | None = None, val_split: float | None = None,
                 val_size: int | None = None, cluster: Mapping[str, Any] | None = None, batch_size: int = 8,
                 image_size: int | None = None, object_size: float | str | None = None,
                 on_start: Callable[[str], None] | None = None) -> "Report":
        """The CVPPP metrics, AP and COCO mask AP on a labelled dataset's validation split
        (`data`: a `--data` spec; None: the run's own). What `instseg evaluate` does."""
        from instseg.predict.evaluation import EvalData, evaluate_runner_on

        return evaluate_runner_on(self.runner, self.config, EvalData(data, val_list, val_split, val_size),
                                  source=self.path, where=self.where, image_size=image_size,
                                  params=self.cluster_params(cluster), batch_size=batch_size, on_start=on_start,
                                  object_size=object_size)


def load(path: str | os.PathLike, *, device: str = "auto", provider: str = "auto",
         intra_op_threads: int = 0) -> Predictor:
    """A run directory or checkpoint (PyTorch, on `device`) or an exported `.onnx` file (ONNX
    Runtime, on `provider`, torch-free) as a Predictor."""
    if is_onnx(path):
        return load_onnx(path, provider=provider, intra_op_threads=intra_op_threads)
    from instseg.predict.torch_runner import TorchRunner

    runner = TorchRunner.from_checkpoint(path, device)
    return Predictor(runner, str(path), runner.device.describe(), runner.config)


def load_onnx(path: str | os.PathLike, *, provider: str = "auto", intra_op_threads: int = 0) -> Predictor:
    """An exported model as a Predictor, whatever its file name (`instseg infer`): torch-free.
    `intra_op_threads`: at most the available CPUs (0: ONNX Runtime's default)."""
    from instseg.limits import at_most_cpus
    from instseg.runtime import OnnxRunner

    runner = OnnxRunner.open(path, provider, at_most_cpus(intra_op_threads))
    return Predictor(runner, str(path), runner.providers.describe(), {})


def export(path: str | os.PathLike, out: str | os.PathLike | None = None, **options: Any) -> Path:
    """A run directory or checkpoint as one ONNX file, checked against PyTorch (what
    `instseg export` does); returns the file written. `options`: `exporters.run.plan_run_export`'s."""
    from instseg.exporters.run import export_run

    return export_run(path, out, **options).path
