"""`--cluster auto`: the run's clustering method, measured on its own validation images.

Which method turns embeddings into instances best depends on the data: k-means with the
counted k suits a rosette of 10-20 touching leaves, `regions` suits hundreds of nuclei. During
training an `auto` run validates with a guess from the data (`clustering.resolve_method`); when the
run completes, the best checkpoint is scored with every candidate, and the winner (by mean
SBD, the metric that picks the best epoch) becomes the run's method: written into best.pt,
last.pt and config.json, so `predict`, `evaluate` and the exported ONNX metadata use it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from instseg.checkpoint import load_checkpoint, save_checkpoint
from instseg.instances.clustering import ClusterParams
from instseg.io.atomic import atomic_write_text
from instseg.metrics.scores import summarize
from instseg.predict.evaluation import evaluate_dataset
from instseg.train.config import TrainConfig

CANDIDATES = ("kmeans", "regions")


def choose_method(model: torch.nn.Module, dataset: Sequence[dict[str, Any]], device: torch.device,
                  params: ClusterParams, image_size: int, scale: float | None,
                  batch_size: int) -> tuple[str, dict[str, float]]:
    """Score `model` on `dataset` with each candidate method; the best one and every mean SBD."""
    scores = {}
    for method in CANDIDATES:
        result = evaluate_dataset(model, dataset, device, image_size=image_size, batch_size=batch_size,
                                  params=params.override(method=method), scale=scale)
        scores[method] = summarize(result.scores)["sbd"]["mean"]
    return max(scores, key=scores.get), scores


def choose_for_run(run_dir: Path, model: torch.nn.Module, dataset: Sequence[dict[str, Any]], device: torch.device,
                   params: ClusterParams, config: TrainConfig) -> tuple[str, dict[str, float]]:
    """best.pt's weights in a copy of `model` (the trainer's own model stays as trained, the same
    on every process), scored with each method; the winner recorded in the run."""
    best = copy.deepcopy(model)
    best.load_state_dict(load_checkpoint(run_dir / "best.pt").state_dict)
    method, scores = choose_method(best, dataset, device, params, config.image_size, config.scale, config.batch_size)
    record_method(run_dir, method, scores)
    return method, scores


def record_method(run_dir: Path, method: str, scores: dict[str, float]) -> None:
    """Make `method` the run's clustering in its checkpoints and config.json (atomic rewrites)."""
    for name in ("best.pt", "last.pt"):
        path = run_dir / name
        if path.exists():
            checkpoint = replace(load_checkpoint(path).with_config(cluster=method), cluster_scores=scores)
            save_checkpoint(path, checkpoint)
    config_path = run_dir / "config.json"
    record = json.loads(config_path.read_text())
    record["config"]["cluster"] = method
    record["cluster_scores"] = scores
    atomic_write_text(config_path, json.dumps(record, indent=2))
