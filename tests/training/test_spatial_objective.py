"""The spatial-embedding objective end to end through the CLI, and objectives as plugins.

One tiny spatial run (trained once per module, with --tensorboard) goes through every verb a
discriminative run does: evaluate, predict (COCO scores from the seed map), export to ONNX (the
coordinate grid is computed in the graph; parity checked at two shapes by `export` itself), int8
export judged on the task, and infer, which must give predict's label maps. A fixed-scale spatial
run predicts a large image tile by tile, in both runtimes. Options that do not fit the objective
are refused with one line before any work; a third objective registered by a plugin trains
without code of its own in instseg. Resume and DDP run both objectives in their own modules.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cli_support import invoke, run_main
from data_fixtures import nuclei_folder, nuclei_image
from instseg.checkpoint import load_checkpoint, save_checkpoint
from instseg.data.synthetic import render_plant
from instseg.io.images import read_label_map
from instseg.io.writing import write_rgb
from instseg.metrics.scores import symmetric_best_dice
from instseg.models.hookspecs import hookimpl
from instseg.models.registry import get_registry
from instseg.models.specs import ObjectiveSpec
from instseg.train.config import DISCRIMINATIVE_WEIGHTS, LossWeights
from instseg.train.losses import MultiTaskLoss
from instseg.train.tensorboard import PICTURE_TAG
from instseg.train.trainer import Trainer
from training_support import recording_console, tiny_config

TINY = ["--model", "unet-cbam", "--width", "4", "--image-size", "64", "--epochs", "2", "--train-size", "16",
        "--val-size", "4", "--batch-size", "4", "--device", "cpu", "--no-amp"]


@pytest.fixture(scope="module")
def spatial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spatial")
    result = invoke("train", *TINY, "--objective", "spatial", "--tensorboard", "--out", out, "--name", "run")
    assert result.exit_code == 0, result.output
    return out / "run"


@pytest.fixture(scope="module")
def plants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plants")
    for i, size in enumerate([(64, 64), (80, 96)]):
        write_rgb(folder / f"plant{i}.png", render_plant(5, i, size, split="val")[0])
    return folder


def test_the_run_records_the_objective_its_channels_and_seed_clustering(spatial_run):
    config = json.loads((spatial_run / "config.json").read_text())["config"]
    assert (config["objective"], config["cluster"], config["embedding_dim"]) == ("spatial", "seeds", 5)
    assert config["position_scale"] == 64.0
    assert set(config["loss_weights"]) == {"instance", "smooth", "seed", "cross_entropy", "dice", "count"}
    train_terms = json.loads((spatial_run / "metrics.jsonl").read_text().splitlines()[-1])["train"]
    assert {"instance", "smooth", "seed"} <= set(train_terms)


def test_evaluate_predict_export_and_infer_agree(spatial_run, plants, tmp_path):
    assert invoke("evaluate", spatial_run).exit_code == 0
    predicted = invoke("predict", spatial_run, plants, "--out", tmp_path / "torch", "--coco", tmp_path / "coco.json")
    assert predicted.exit_code == 0, predicted.output
    onnx_path = tmp_path / "model.onnx"
    exported = invoke("export", spatial_run, "--onnx", "-o", onnx_path)
    assert exported.exit_code == 0, exported.output
    parity = re.findall(r"(\d+x3x\d+x\d+)\s+│\s+embedding\s+│.*│\s+ok\s+│", exported.output)
    assert len(set(parity)) == 2, exported.output  # the offsets + grid, sigma and seeds match at two shapes
    props = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert props["instseg.objective"] == "spatial"
    assert json.loads(props["instseg.cluster"])["embeddings"] == "spatial"
    inferred = invoke("infer", onnx_path, plants, "--out", tmp_path / "onnx")
    assert inferred.exit_code == 0, inferred.output
    for name in ("plant0", "plant1"):
        torch_labels = read_label_map(tmp_path / "torch" / f"{name}_label.png")
        onnx_labels = read_label_map(tmp_path / "onnx" / f"{name}_label.png")
        assert torch_labels.shape == Image.open(plants / f"{name}.png").size[::-1]
        if torch_labels.any() or onnx_labels.any():  # seeds are deterministic: only rounding may differ
            assert symmetric_best_dice(torch_labels, onnx_labels) >= 0.99
    detections = json.loads((tmp_path / "coco.json").read_text())
    scores = [d["score"] for d in (detections if isinstance(detections, list) else detections["annotations"])]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_tensorboard_logs_the_spatial_loss_terms_at_every_step(spatial_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(spatial_run / "tensorboard"))
    events.Reload()
    steps = json.loads((spatial_run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    scalars = set(events.Tags()["scalars"])
    assert {"train/instance", "train/smooth", "train/seed", "train/ce", "val/sbd", "val/ap"} <= scalars, scalars
    assert "train/disc" not in scalars
    assert len(events.Scalars("train/seed")) == steps and events.Tags()["images"] == [PICTURE_TAG]


def test_int8_export_of_spatial_embeddings_is_judged_on_the_task(spatial_run, plants, tmp_path):
    target = tmp_path / "int8.onnx"
    result = invoke("export", spatial_run, "--onnx", "--int8", "-o", target, "--sbd-tolerance", "1")
    assert result.exit_code == 0, result.output
    assert "int8 against fp32 on 4 validation images" in result.output and "tolerance -1: ok" in result.output
    validation = json.loads({p.key: p.value for p in onnx.load(target).metadata_props}["instseg.quantization"])
    assert validation["validation"]["images"] == 4 and 0.0 <= validation["validation"]["sbd_int8"] <= 1.0
    inferred = invoke("infer", target, plants, "--out", tmp_path / "out", "--no-overlay")
    assert inferred.exit_code == 0, inferred.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["plant0_label.png", "plant1_label.png"]


RADIUS = 10.0  # px: the disc every seed claims once the head is set by hand (below)


def set_round_instances(run):
    """Every pixel foreground and a seed, no offsets, one bandwidth whose phi = 0.5 contour is a
    circle of RADIUS px. Seed clustering then takes seeds in raster order and every instance is
    the unclaimed part of one such disc, as long as the in-graph grid counts working pixels /
    position_scale at any tile shape (a grid off by 2x makes pieces 4x larger or smaller)."""
    checkpoint = load_checkpoint(run / "last.pt")
    state = checkpoint.state_dict
    scale = checkpoint.config["position_scale"]
    state["semantic_head.conv.bias"] = torch.tensor([-20.0, 20.0])
    state["embedding_head.conv.weight"].zero_()
    sigma = math.log(math.log(2) * scale ** 2 / RADIUS ** 2) / 10  # s (r / scale)^2 = ln 2, s = exp(10 sigma)
    state["embedding_head.conv.bias"].copy_(torch.tensor([0.0, 0.0, sigma, sigma, 20.0]))
    save_checkpoint(run / "last.pt", checkpoint)


def test_a_fixed_scale_spatial_run_predicts_large_images_tile_by_tile_in_both_runtimes(tmp_path):
    data = nuclei_folder(tmp_path / "nuclei")
    result = invoke("train", "--model", "unet", "--width", "4", "--data", f"folder:{data}", "--val-split", "0.4",
                    "--scale", "1", "--image-size", "64", "--epochs", "1", "--batch-size", "2",
                    "--objective", "spatial", "--out", tmp_path / "runs", "--name", "run")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "run"
    set_round_instances(run)
    image, _ = nuclei_image(200, 260, seed=9)
    Image.fromarray(np.round(255 * (0.15 + 0.6 * image[..., 1])).astype(np.uint8)).save(tmp_path / "big.png")
    tiles = ["--tile", "64", "--tile-overlap", "24"]
    predicted = invoke("predict", run / "last.pt", tmp_path / "big.png", "--out", tmp_path / "pt", *tiles)
    assert predicted.exit_code == 0, predicted.output
    assert "scale 1 (tiles of 64 px" in predicted.output
    exported = invoke("export", run / "last.pt", "--onnx", "-o", tmp_path / "m.onnx")
    assert exported.exit_code == 0, exported.output
    inferred = invoke("infer", tmp_path / "m.onnx", tmp_path / "big.png", "--out", tmp_path / "ort", *tiles)
    assert inferred.exit_code == 0, inferred.output

    labels = read_label_map(tmp_path / "pt" / "big_label.png")
    assert labels.shape == (200, 260)
    disc = math.pi * RADIUS ** 2
    areas = np.bincount(labels.ravel())[1:]
    assert disc / 4 <= areas.max() <= disc * 1.1  # at most one disc; a quarter one in a tile's corner
    assert len(areas) >= 20  # 30 tiles, stitched
    assert symmetric_best_dice(read_label_map(tmp_path / "ort" / "big_label.png"), labels) > 0.98


@pytest.mark.parametrize("args, message", [
    (["--objective", "spatial", "--embedding-dim", "8"], "--objective spatial needs --embedding-dim 5"),
    (["--objective", "spatial", "--position-scale", "0"], "--objective spatial needs --position-scale > 0"),
    (["--objective", "spatial", "--cluster", "kmeans"], "--cluster kmeans does not read the spatial objective"),
    (["--objective", "spatial", "--loss-weight", "discriminative=1"], "--loss-weight 'discriminative=1'"),
    (["--objective", "nope"], "unknown objective 'nope'"),
])
def test_options_that_do_not_fit_the_objective_are_refused(args, message, tmp_path, capsys):
    code, stderr = run_main(["train", *TINY, *args, "--out", tmp_path], capsys)
    assert code != 0 and "Traceback" not in stderr
    assert message in " ".join(stderr.split()), stderr
    assert not list(tmp_path.iterdir())  # refused before any run directory


def test_a_discriminative_method_is_refused_on_spatial_embeddings(spatial_run, plants, tmp_path, capsys):
    code, stderr = run_main(["predict", spatial_run, plants, "--out", tmp_path / "p", "--cluster", "kmeans"], capsys)
    assert code != 0 and "Traceback" not in stderr
    assert "does not read spatial embeddings; choose from seeds" in " ".join(stderr.split()), stderr


class HalfDiscriminative:
    """A third-party objective: the discriminative loss at half weight, read by k-means."""

    @hookimpl
    def register_objectives(self, register):
        def loss(config):
            weights = LossWeights(**config.loss_weights)  # every term: the run's over the spec's
            return MultiTaskLoss(config.max_instances, weights, config.delta_v, config.delta_d)

        register(ObjectiveSpec("half-discriminative", loss, loss_weights={k: v / 2 for k, v in
                                                                         DISCRIMINATIVE_WEIGHTS.items()}))


def test_a_plugin_objective_trains_and_predicts_with_a_builtin_clustering(tmp_path):
    registry = get_registry()
    registry.register_plugin(HalfDiscriminative(), name="half-objective")
    try:
        assert "half-discriminative" in registry.list_objectives()
        trainer = Trainer(tiny_config(tmp_path, objective="half-discriminative", cluster="kmeans",
                                      loss_weights={"count": 0.5}), recording_console())
        result = trainer.fit()
        assert np.isfinite(result.last["sbd"]["mean"])
        config = json.loads((trainer.run_dir / "config.json").read_text())["config"]
        assert (config["objective"], config["cluster"]) == ("half-discriminative", "kmeans")
    finally:
        registry.unregister_plugin("half-objective")
    assert "half-discriminative" not in registry.list_objectives()
