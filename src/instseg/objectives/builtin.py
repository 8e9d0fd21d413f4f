"""The built-in objectives, registered through instseg's own entry point as a plugin's would be."""

from __future__ import annotations

from typing import TYPE_CHECKING

from instseg.models.hookspecs import hookimpl
from instseg.models.specs import ObjectiveSpec
from instseg.objectives.spatial import SPATIAL_WEIGHTS, SpatialEmbeddingLoss
from instseg.train.config import DISCRIMINATIVE_WEIGHTS, LossWeights
from instseg.train.losses import MultiTaskLoss

if TYPE_CHECKING:
    from torch import nn

    from instseg.train.config import TrainConfig

SPATIAL_CHANNELS = 5  # row and column offsets, a bandwidth per axis, the seed logit
SPATIAL_SCALE = 64.0  # pixels per coordinate unit: an offset of 1 is 64 pixels


def discriminative(config: "TrainConfig") -> "nn.Module":
    """Pull / push embeddings to their instance mean (De Brabandere et al. 2017); k-means, mean-shift or regions."""
    # config.loss_weights holds every term: objectives.check_config filled the defaults in
    return MultiTaskLoss(config.max_instances, LossWeights(**config.loss_weights), config.delta_v, config.delta_d)


def spatial(config: "TrainConfig") -> "nn.Module":
    """Offsets to the object's centre with a learned bandwidth and seeds (Neven et al. 2019); seed clustering."""
    return SpatialEmbeddingLoss(config.max_instances, config.position_scale, config.loss_weights)


@hookimpl
def register_objectives(register) -> None:
    register(ObjectiveSpec("discriminative", discriminative, embeddings="discriminative",
                           loss_weights=DISCRIMINATIVE_WEIGHTS))
    register(ObjectiveSpec("spatial", spatial, embeddings="spatial", loss_weights=SPATIAL_WEIGHTS,
                           embedding_dim=SPATIAL_CHANNELS, position_scale=SPATIAL_SCALE))
