"""Run a model over images or a dataset, cluster, and score with the CVPPP metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from instseg.core.clustering import ClusterParams, instances_from_outputs
from instseg.core.data.loaders import eval_loader
from instseg.core.data.transforms import resize_image_tensor
from instseg.core.interfaces import SegOutput
from instseg.core.metrics import ImageScores, count_instances, score_image, summarize
from instseg.imageio import resize_image, resize_labels, working_size, write_rgb
from instseg.render import colorize, embedding_rgb, panel, read_metrics, training_curves


@dataclass
class Prediction:
    labels: np.ndarray  # H x W int32 instance map
    count: float  # counter head, in instances (not normalised)


@dataclass
class EvalResult:
    names: list[str] = field(default_factory=list)
    scores: list[ImageScores] = field(default_factory=list)
    head_counts: list[float] = field(default_factory=list)
    gt_counts: list[int] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        return summarize(self.scores)


def outputs_to_predictions(output: SegOutput, max_instances: int, params: ClusterParams) -> list[Prediction]:
    semantic = output.semantic.float().cpu().numpy()
    embedding = output.embedding.float().cpu().numpy()
    count = output.count.float().cpu().numpy().reshape(-1)
    return [
        Prediction(instances_from_outputs(semantic[i], embedding[i], count[i], max_instances, params),
                   float(count[i] * max_instances))
        for i in range(len(count))
    ]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, params: ClusterParams = ClusterParams()) -> list[Prediction]:
    """B x 3 x H x W images in [0, 1] (on the model's device) -> one Prediction per image."""
    model.eval()
    return outputs_to_predictions(model(images), model.max_instances, params)


@torch.no_grad()
def evaluate_dataset(
    model: torch.nn.Module,
    dataset: Dataset | Iterable,
    device: torch.device,
    *,
    batch_size: int = 8,
    params: ClusterParams = ClusterParams(),
    keep_predictions: int = 0,
    image_size: int | None = None,
) -> EvalResult:
    """Score every image of a labelled dataset; keep the first `keep_predictions` label maps.

    With `image_size`, each image is predicted at its working size (shorter side = image_size,
    as in training) and the predicted label map is brought back to the original resolution
    with nearest neighbour, where it is scored: metrics never depend on the training size.
    """
    loader = dataset if isinstance(dataset, DataLoader) else eval_loader(dataset, batch_size)
    result = EvalResult()
    for batch in loader:
        images = batch["image"].to(device)
        original = tuple(images.shape[-2:])
        work = working_size(*original, image_size) if image_size else original
        predictions = predict(model, resize_image_tensor(images, work), params)
        for name, labels, pred in zip(batch["name"], batch["labels"].numpy(), predictions):
            predicted = resize_labels(pred.labels, original)
            result.names.append(name)
            result.scores.append(score_image(predicted, labels))
            result.head_counts.append(pred.count)
            result.gt_counts.append(count_instances(labels))
            if len(result.predictions) < keep_predictions:
                result.predictions.append(predicted)
    return result


@torch.no_grad()
def save_epoch_pictures(run_dir: Path, epoch: int, model: torch.nn.Module, dataset: Dataset, device: torch.device,
                        params: ClusterParams, image_size: int, images: int = 4) -> None:
    """`pictures/epoch-NNN.png` (input / embedding PCA / prediction / ground truth for the
    first validation images, each at its working size) and `curves.png` (from
    metrics.jsonl, the curves' one source). Images go through the model one by one, so
    datasets whose images differ in size work too."""
    model.eval()
    rows = []
    for index in range(min(images, len(dataset))):
        item = dataset[index]
        image = item["image"].permute(1, 2, 0).numpy()
        size = working_size(*image.shape[:2], image_size)
        image, gt = resize_image(image, size), resize_labels(item["labels"].numpy(), size)
        output = model(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device))
        [pred] = outputs_to_predictions(output, model.max_instances, params)
        semantic, embedding = output.semantic[0].float().cpu().numpy(), output.embedding[0].float().cpu().numpy()
        rows.append([("input", image), ("embedding (PCA)", embedding_rgb(embedding, semantic[1] > semantic[0])),
                     (f"prediction ({int(pred.labels.max(initial=0))})", colorize(pred.labels)),
                     (f"ground truth ({count_instances(gt)})", colorize(gt))])
    write_rgb(run_dir / "pictures" / f"epoch-{epoch:03d}.png", panel(rows))
    write_rgb(run_dir / "curves.png", training_curves(read_metrics(run_dir / "metrics.jsonl")))
