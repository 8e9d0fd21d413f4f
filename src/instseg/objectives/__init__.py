"""Instance objectives: what trains the embedding head, and how clustering reads it.

An objective is a registered part (`register_objectives` hook, `ObjectiveSpec`), as models are:
the built-in `discriminative` (De Brabandere et al. 2017, the default) and `spatial` (Neven et al.
2019: offsets to the object's centre, a learned bandwidth and a seed map) come from this package's
own entry point, exactly as a third-party objective would. The model and its heads are the same for
every objective; an objective fixes the embedding channels it needs, its loss terms and their
weights, and the clustering family that turns its embeddings into instances.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from instseg.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from torch import nn

    from instseg.models.specs import ObjectiveSpec
    from instseg.train.config import TrainConfig

def objective_spec(name: str) -> "ObjectiveSpec":
    """The registered objective called `name`; a ConfigError naming the known ones otherwise."""
    from instseg.models.registry import get_registry

    try:
        return get_registry().objective_spec(name)
    except RegistryError as exc:
        raise ConfigError(f"--objective {name}: {exc}") from None


def with_objective(options: Mapping[str, Any], given: set[str], spec: "ObjectiveSpec") -> dict[str, Any]:
    """`options` with the channels and coordinate grid `spec` needs: filled in where not typed,
    refused where typed otherwise (one line naming the objective and the value it needs)."""
    values = dict(options)
    for key, needed, why in (("embedding_dim", spec.embedding_dim, "its channel layout"),
                             ("position_scale", spec.position_scale, "a coordinate grid")):
        if needed is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "embedding_dim" and key in given and values[key] != needed:
            raise ConfigError(f"--objective {spec.name} needs {flag} {needed} ({why}); got {values[key]}")
        if key == "position_scale" and key in given and not values[key] > 0:
            raise ConfigError(f"--objective {spec.name} needs {flag} > 0 ({why}); got {values[key]}")
        if key not in given:
            values[key] = needed
    return values


def check_config(config: "TrainConfig") -> "ObjectiveSpec":
    """The run's objective, after checking that the run's options fit it; `--cluster auto` becomes
    the method when only one reads the objective's embeddings (so a run's method always says
    what its embeddings are: `clustering.embeddings_read_by`), and the loss weights not given
    take the objective's defaults."""
    from instseg.instances.clustering import AUTO, METHODS_FOR

    spec = objective_spec(config.objective)
    methods = METHODS_FOR[spec.embeddings]
    if config.cluster == AUTO and len(methods) == 1:
        config.cluster = methods[0]
    if config.cluster not in (AUTO, *methods):
        raise ConfigError(f"--cluster {config.cluster} does not read the {spec.name} objective's embeddings; "
                          f"choose from {', '.join((AUTO, *methods))}")
    unknown = sorted(set(config.loss_weights) - set(spec.loss_weights))
    if unknown:
        raise ConfigError(f"--loss-weight {', '.join(unknown)}: not a term of the {spec.name} objective "
                          f"(its terms: {', '.join(spec.loss_weights)})")
    config.loss_weights = {**spec.loss_weights, **config.loss_weights}  # the run records every term's weight
    if spec.embedding_dim is not None and config.embedding_dim != spec.embedding_dim:
        raise ConfigError(f"the {spec.name} objective needs embedding_dim {spec.embedding_dim}, "
                          f"the run has {config.embedding_dim}")
    if spec.position_scale is not None and not config.position_scale > 0:
        raise ConfigError(f"the {spec.name} objective needs position_scale > 0, the run has {config.position_scale}")
    return spec


def build_loss(config: "TrainConfig") -> "nn.Module":
    """The run's loss module: its objective's, with the run's weights over the objective's defaults."""
    return check_config(config).loss(config)
