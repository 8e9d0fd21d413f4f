"""Score a model on a labelled dataset through the one prediction pipeline; epoch pictures.

Evaluation, training's validation and `instseg predict` share `predict.pipeline`: each
image is predicted at its working size (shorter side = the run's image size) and the label
map is brought back to the original resolution, where it is scored, so metrics never depend
on the training size. The runner may be a PyTorch model or an ONNX Runtime session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from instseg.device import DeviceChoice
from instseg.errors import ConfigError, DataError
from instseg.instances.clustering import ClusterParams
from instseg.io.coco_results import LabelMapCoco, instance_scores
from instseg.io.images import resize_image, resize_labels, working_size
from instseg.io.writing import write_rgb
from instseg.io.microscopy import FIXED, Reading
from instseg.io.pictures import colorize, embedding_rgb, panel, read_metrics, training_curves
from instseg.metrics.reports import ImageRow, Report
from instseg.metrics.scores import count_instances, score_image, summarize
from instseg.predict.pipeline import Failure, Prediction, Runner, Source, predict_sources
from instseg.predict.sizing import ObjectSize, predict_sized
from instseg.predict.tiling import geometry
from instseg.predict.torch_runner import TorchRunner


@dataclass
class EvalResult:
    rows: list[ImageRow] = field(default_factory=list)  # in dataset order
    predictions: list[np.ndarray] = field(default_factory=list)  # the first `keep_predictions` label maps
    coco: dict[str, Any] | None = None  # COCO mask AP, when asked for

    @property
    def scores(self) -> list:
        return [row.scores for row in self.rows]

    def summary(self) -> dict[str, dict[str, float]]:
        return summarize(self.scores)


def labelled_sources(dataset: Sequence[dict[str, Any]], count: int | None = None
                     ) -> Iterator[tuple[Source, np.ndarray]]:
    """A dataset's items (3 x H x W tensors in [0, 1]) as pipeline sources named by item, each
    with its label map: every item is read once."""
    for index in range(min(len(dataset), count if count is not None else len(dataset))):
        item = dataset[index]
        name = str(item.get("name", index))
        yield Source(Path(name), name, item["image"].permute(1, 2, 0).numpy(), index), item["labels"].numpy()


def model_runner(model: torch.nn.Module, device: torch.device | str, image_size: int,
                 params: ClusterParams = ClusterParams(), scale: float | None = None) -> TorchRunner:
    """A runner around an in-memory model, in fp32 (what validation and pictures use)."""
    return TorchRunner(model, DeviceChoice(torch.device(device), None, "in-memory model"), image_size, params,
                       scale=scale)


def evaluate_runner(runner: Runner, dataset: Sequence[dict[str, Any]], *, batch_size: int = 8,
                    params: ClusterParams | None = None, keep_predictions: int = 0,
                    coco: bool = False, object_size: ObjectSize = None) -> EvalResult:
    """Predict and score every image of a labelled dataset; keep the first label maps asked for;
    with `coco`, also the COCO mask AP (instances scored by `cocoresults.instance_scores`)."""
    truth: dict[int, np.ndarray] = {}

    def sources() -> Iterator[Source]:
        for source, labels in labelled_sources(dataset):
            truth[source.index] = labels
            yield source

    by_index: dict[int, Prediction] = {}
    for result in predict_sized(sources(), runner, params, batch_size, object_size):
        if isinstance(result, Failure):
            raise DataError(result.message)
        by_index[result.index] = result
    evaluation = EvalResult()
    gathered = LabelMapCoco() if coco else None
    for index in sorted(by_index):
        prediction, labels = by_index[index], truth.pop(index)
        evaluation.rows.append(ImageRow(prediction.name, score_image(prediction.labels, labels),
                                        count_instances(labels), prediction.head_count))
        if len(evaluation.predictions) < keep_predictions:
            evaluation.predictions.append(prediction.labels)
        if gathered is not None:
            gathered.add(prediction.name, labels, prediction.labels,
                         instance_scores(prediction.labels, prediction.probability))
    if gathered is not None:
        evaluation.coco = gathered.summary()
    return evaluation


@torch.no_grad()
def evaluate_dataset(model: torch.nn.Module, dataset: Sequence[dict[str, Any]], device: torch.device | str, *,
                     image_size: int, batch_size: int = 8, params: ClusterParams = ClusterParams(),
                     keep_predictions: int = 0, scale: float | None = None) -> EvalResult:
    """`evaluate_runner` for an in-memory PyTorch model (training's validation)."""
    return evaluate_runner(model_runner(model, device, image_size, params, scale), dataset, batch_size=batch_size,
                           params=params, keep_predictions=keep_predictions)


@dataclass(frozen=True)
class EvalData:
    """Which images to score: a dataset spec and its validation split (None: the run's own)."""

    data: str | None = None
    val_list: str | None = None
    val_split: float | None = None
    val_size: int | None = None  # synthetic data: validation images


def run_datasets(spec: str, config: Mapping[str, Any], data: EvalData, image_size: int,
                 train_size: int = 1, reading: Reading = FIXED
                 ) -> tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]]:
    """The un-augmented train and validation sets of `spec` split as a run's `config` says,
    with `data`'s changes (synthetic data: `train_size` training images), read as the model reads."""
    from instseg.data import build_datasets

    return build_datasets(
        spec, image_size=image_size, seed=config.get("seed", 0), train_size=train_size,
        val_size=data.val_size or config.get("val_size", 32), augment=False,
        val_split=data.val_split or config.get("val_split", 0.2), val_list=data.val_list or config.get("val_list"),
        reading=reading)


def evaluate_runner_on(runner: Runner, config: Mapping[str, Any], data: EvalData, *, source: str, where: str,
                       params: ClusterParams, image_size: int | None = None, batch_size: int = 8,
                       on_start: Callable[[str], None] | None = None, object_size: ObjectSize = None) -> Report:
    """Score a loaded model (`instseg.load`'s runner; `config`: its run's options, empty for an
    ONNX file) on a labelled dataset's validation split: what `Predictor.evaluate` does."""
    spec = data.data or config.get("data")
    if spec is None:
        raise ConfigError(f"{source}: an ONNX file does not record its training data: give --data (and --val-list)")
    if image_size:
        runner.image_size = image_size
    _, val_set = run_datasets(spec, config, data, runner.image_size, reading=runner.reading)
    if on_start is not None:
        on_start(f"evaluating {runner.description} on {spec} ({len(val_set)} images, {geometry(runner)}) "
                 f"on {where}; {params.method} clustering")
    result = evaluate_runner(runner, val_set, batch_size=batch_size, params=params, coco=True, object_size=object_size)
    record = {"model": source, "data": spec, "image_size": runner.image_size, "cluster": asdict(params),
              "object_size": object_size}
    if config:
        record.update(checkpoint=runner.checkpoint_path, epoch=runner.epoch)
    return Report(f"{runner.description} on {spec} ({len(result.rows)} images)", result.rows, record, result.coco)


@torch.no_grad()
def save_epoch_pictures(run_dir: Path, epoch: int, model: torch.nn.Module, dataset: Sequence[dict[str, Any]],
                        device: torch.device | str, params: ClusterParams, image_size: int, images: int = 4,
                        scale: float | None = None) -> None:
    """`pictures/epoch-NNN.png` (input / embedding PCA / prediction / ground truth for the
    first validation images, each at its working size; images predicted tile by tile have no
    embedding picture) and `curves.png` (from
    metrics.jsonl, the curves' one source). Images go through the model one by one, so
    datasets whose images differ in size work too."""
    runner = model_runner(model, device, image_size, params, scale)
    rows = []
    for source, truth in labelled_sources(dataset, images):
        [prediction] = predict_sources([source], runner, params, batch_size=1)
        if isinstance(prediction, Failure):
            raise DataError(prediction.message)
        size = working_size(*source.image.shape[:2], image_size, scale)
        labels = resize_labels(prediction.labels, size)
        gt = resize_labels(truth, size)
        tiled = prediction.embedding is None  # larger than a tile: no single embedding map
        rows.append([("input", resize_image(source.image, size)),
                     ("embedding (tiled: none)" if tiled else "embedding (PCA)",
                      np.zeros((*size, 3), np.uint8) if tiled else embedding_rgb(prediction.embedding,
                                                                                   prediction.foreground)),
                     (f"prediction ({int(labels.max(initial=0))})", colorize(labels)),
                     (f"ground truth ({count_instances(gt)})", colorize(gt))])
    write_rgb(run_dir / "pictures" / f"epoch-{epoch:03d}.png", panel(rows))
    write_rgb(run_dir / "curves.png", training_curves(read_metrics(run_dir / "metrics.jsonl")))
