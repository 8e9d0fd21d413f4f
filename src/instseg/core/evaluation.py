"""Run a model over images or a dataset, cluster, and score with the CVPPP metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from instseg.core.clustering import ClusterParams, instances_from_outputs
from instseg.core.data.loaders import eval_loader
from instseg.core.data.transforms import resize_image_tensor
from instseg.core.interfaces import SegOutput
from instseg.core.metrics import ImageScores, score_image, summarize
from instseg.imageio import resize_labels, working_size


@dataclass
class Prediction:
    labels: np.ndarray  # H x W int32 instance map
    count: float  # counter head, in instances (not normalised)


@dataclass
class EvalResult:
    names: list[str] = field(default_factory=list)
    scores: list[ImageScores] = field(default_factory=list)
    head_counts: list[float] = field(default_factory=list)
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
            if len(result.predictions) < keep_predictions:
                result.predictions.append(predicted)
    return result
