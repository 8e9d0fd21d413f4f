"""Crowded scenes end to end: fixed-scale training, many instances, the measured clustering
choice, and tiled prediction that `predict` and `infer` agree on."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from data_fixtures import nuclei_folder, nuclei_image
from instseg.cli.main import app
from instseg.checkpoint import load_checkpoint, save_checkpoint
from instseg.models.factory import load_trained
from instseg.data.transforms import TrainTransform
from instseg.errors import ConfigError
from instseg.runtime.metadata import ModelInfo
from instseg.io.images import read_label_map, working_size
from instseg.metrics.scores import symmetric_best_dice

cli = CliRunner()


def test_working_size_at_a_fixed_scale_ignores_the_image_size():
    assert working_size(300, 500, 128) == (128, 213)
    assert working_size(300, 500, 128, scale=1.0) == (300, 500)
    assert working_size(300, 500, 128, scale=0.5) == (150, 250)


@pytest.mark.parametrize("scale, side", [(1.0, 48), (0.5, 96)])
def test_training_crops_at_a_fixed_scale_keep_the_pixel_size(scale, side):
    """A crop at scale s covers image_size / s original pixels, whatever the image's size."""
    image = torch.arange(200 * 300, dtype=torch.float32).reshape(1, 200, 300).expand(3, -1, -1) / 60000
    labels = torch.arange(200 * 300).reshape(200, 300)
    crop = TrainTransform(48, augment=None, scale=scale)({"image": image, "labels": labels, "name": "x"})
    ys, xs = np.divmod(crop["labels"].numpy(), 300)
    assert crop["labels"].shape == (48, 48)
    assert ys.max() - ys.min() == pytest.approx(side, abs=2) and xs.max() - xs.min() == pytest.approx(side, abs=2)


def test_scale_runs_count_every_instance_choose_their_clustering_and_tile_large_images(tmp_path):
    data = nuclei_folder(tmp_path / "nuclei")
    result = cli.invoke(app, ["train", "--model", "unet", "--width", "4", "--data", f"folder:{data}",
                              "--val-split", "0.4", "--scale", "1", "--image-size", "64", "--epochs", "1",
                              "--batch-size", "2", "--out", str(tmp_path / "runs"), "--name", "run"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "run"
    record = json.loads((run / "config.json").read_text())
    largest = max(int(np.asarray(Image.open(p)).max()) for p in (data / "masks").iterdir())
    assert largest > 20 and record["config"]["max_instances"] == largest  # raised, never clipped
    assert record["config"]["scale"] == 1.0
    assert record["config"]["cluster"] in ("kmeans", "regions") and set(record["cluster_scores"]) == {"kmeans", "regions"}
    trained = load_trained(run)
    assert trained.scale == 1.0 and trained.cluster.method == record["config"]["cluster"]

    # one epoch teaches nothing: make every pixel foreground, so that the embeddings (not the
    # semantic head) decide the instances that tiles must stitch and both runtimes must agree on
    best = load_checkpoint(run / "best.pt")
    best.state_dict["semantic_head.conv.bias"] = torch.tensor([-20.0, 20.0])
    save_checkpoint(run / "best.pt", best)
    image, _ = nuclei_image(200, 260, seed=9)
    Image.fromarray(np.round(255 * (0.15 + 0.6 * image[..., 1])).astype(np.uint8)).save(tmp_path / "big.png")
    tiles = ["--tile", "64", "--tile-overlap", "24", "--cluster", "regions", "--bandwidth", "0.05"]
    result = cli.invoke(app, ["predict", str(run), str(tmp_path / "big.png"), "--out", str(tmp_path / "pt"), *tiles])
    assert result.exit_code == 0, result.output
    assert "scale 1 (tiles of 64 px" in result.output
    result = cli.invoke(app, ["evaluate", str(run), "--tile", "48", "--tile-overlap", "12", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "scale 1 (tiles of 48 px, overlap 12" in result.output and (tmp_path / "ev" / "metrics.json").is_file()
    result = cli.invoke(app, ["evaluate", str(run), "--tile", "48", "--tile-overlap", "30"])
    assert isinstance(result.exception, ConfigError) and "--tile 48 --tile-overlap 30" in str(result.exception)
    result = cli.invoke(app, ["export", str(run), "--onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    info = ModelInfo.from_props(props, "m.onnx")
    assert info.scale == 1.0 and info.cluster.method == record["config"]["cluster"]
    result = cli.invoke(app, ["infer", str(tmp_path / "m.onnx"), str(tmp_path / "big.png"), "--out", str(tmp_path / "ort"),
                              *tiles])
    assert result.exit_code == 0, result.output
    torch_labels = read_label_map(tmp_path / "pt" / "big_label.png")
    onnx_labels = read_label_map(tmp_path / "ort" / "big_label.png")
    assert torch_labels.shape == (200, 260) and (torch_labels > 0).all() and torch_labels.max() > 1
    assert symmetric_best_dice(onnx_labels, torch_labels) > 0.98
