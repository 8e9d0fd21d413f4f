"""The prediction pipeline (with a numpy runner), `instseg predict` and `instseg evaluate --pred/--gt`."""

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from instseg.instances.clustering import ClusterParams
from instseg.io.microscopy import FIXED
from instseg.metrics.scores import symmetric_best_dice
from instseg.errors import ConfigError, DataError
from instseg.io.images import read_image, read_label_map
from instseg.io.writing import write_label_map, write_rgb
from instseg.io.inputs import gather_inputs, label_files, match_key, output_names, safe_name
from instseg.predict.outputs import OutputOptions, write_prediction
from instseg.predict.pipeline import Failure, Prediction, predict
from predict_support import CodeRunner, leaf_image, write_images

cli = CliRunner()


# -- inputs and names ---------------------------------------------------------------------


def test_gather_inputs_from_files_folders_and_globs(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt", "d.PNG"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    assert gather_inputs([tmp_path]) == [tmp_path / n for n in ("a.jpg", "b.png", "d.PNG")]
    assert gather_inputs([str(tmp_path / "**" / "*.png")]) == [tmp_path / "b.png", tmp_path / "sub" / "e.png"]
    both = gather_inputs([tmp_path / "b.png", tmp_path, tmp_path / "c.txt"])
    assert both == [tmp_path / n for n in ("b.png", "a.jpg", "d.PNG", "c.txt")]  # no duplicates
    with pytest.raises(DataError, match="missing.png: no such file or folder"):
        gather_inputs([tmp_path / "missing.png"])
    with pytest.raises(DataError, match=r"\*.tif: no file matches"):
        gather_inputs([str(tmp_path / "*.tif")])
    with pytest.raises(DataError, match="sub2: folder holds no images"):
        (tmp_path / "sub2").mkdir()
        gather_inputs([tmp_path / "sub2"])


def test_output_names_stay_inside_the_folder_and_never_clash(tmp_path):
    assert safe_name("../../etc/passwd.png") == "passwd"
    assert safe_name("/data/..hidden.png") == "hidden"
    assert safe_name("a b$c\\d.png") == "a_b_c_d"
    assert safe_name("....png") == "image"
    paths = [Path("a/x.png"), Path("b/x.png"), Path("c/X.jpg"), Path("x-2.png"), Path("d/x.png")]
    assert output_names(paths) == ["x", "x-2", "X-3", "x-2-2", "x-4"]


def test_match_keys_pair_cvppp_names(tmp_path):
    assert match_key("plant001_rgb.png") == match_key("plant001_label.png") == "plant001"
    assert match_key("out/plant001_rgb_label.png") == "plant001"
    for name in ("plant001_rgb.png", "plant001_label.png", "plant001_fg.png", "plant002_label.png"):
        (tmp_path / name).write_bytes(b"x")
    assert label_files(tmp_path) == {"plant001": tmp_path / "plant001_label.png",
                                     "plant002": tmp_path / "plant002_label.png"}
    (tmp_path / "plant002_rgb_label.png").write_bytes(b"x")
    with pytest.raises(DataError, match="both match 'plant002'"):
        label_files(tmp_path)


# -- the pipeline --------------------------------------------------------------------------


def test_pipeline_batches_by_size_and_returns_maps_at_the_input_size(tmp_path):
    truth = write_images(tmp_path, [(60, 90), (60, 90), (48, 48), (60, 90)])
    runner = CodeRunner(image_size=30)
    results = list(predict(gather_inputs([tmp_path]), runner, batch_size=2))
    assert all(isinstance(r, Prediction) for r in results) and len(results) == 4
    assert sorted(runner.shapes) == sorted([(2, 3, 30, 45), (1, 3, 30, 30), (1, 3, 30, 45)])
    for r in results:
        gt = truth[match_key(r.path)]
        assert r.labels.shape == gt.shape
        assert symmetric_best_dice(r.labels, gt) > 0.85  # nearest-neighbour up-sampling from 30 px
        assert r.head_count == pytest.approx(len(np.unique(gt)) - 1)


class DiskRunner:
    """Foreground logits = the image's green channel - 0.5 (smooth), one instance everywhere."""

    max_instances, multiple_of, static_size, scale, reading = 20, 1, None, None, FIXED

    def __init__(self, image_size, full_resolution):
        self.image_size = image_size
        self.cluster = ClusterParams(full_resolution=full_resolution)

    def __call__(self, images):
        green = images[:, 1:2] - 0.5
        semantic = np.concatenate([-green, green], 1)
        return semantic, np.zeros((len(images), 2, *images.shape[2:]), np.float32), np.full((len(images), 1), 0.05)


def test_full_resolution_clustering_follows_the_outputs_between_working_pixels(tmp_path):
    yy, xx = np.mgrid[:60, :60]
    disk = (yy - 29.5) ** 2 + (xx - 29.5) ** 2 < 20**2
    image = np.zeros((60, 60, 3), np.uint8)
    image[..., 1] = disk * 255
    write_rgb(tmp_path / "disk.png", image)
    dice = {}
    for full in (False, True):
        [result] = predict(gather_inputs([tmp_path]), DiskRunner(image_size=12, full_resolution=full))
        assert result.labels.shape == (60, 60) and result.labels.max() == 1
        dice[full] = symmetric_best_dice(result.labels, disk.astype(np.int32))
    assert dice[True] > 0.97 and dice[True] > dice[False] + 0.01, dice


def test_pipeline_is_exact_at_the_working_size(tmp_path):
    truth = write_images(tmp_path, [(32, 32), (32, 48)])
    for r in predict(gather_inputs([tmp_path]), CodeRunner(image_size=32)):
        assert symmetric_best_dice(r.labels, truth[match_key(r.path)]) == 1.0


def test_pipeline_pads_to_the_runner_multiple_and_resizes_to_a_static_size(tmp_path):
    truth = write_images(tmp_path, [(30, 45)])
    padded = CodeRunner(image_size=30, multiple_of=16)
    [result] = predict(gather_inputs([tmp_path]), padded)
    assert padded.shapes == [(1, 3, 32, 48)] and result.labels.shape == (30, 45)
    assert symmetric_best_dice(result.labels, truth["plant000"]) == 1.0
    static = CodeRunner(static_size=(24, 24))
    [result] = predict(gather_inputs([tmp_path]), static)
    assert static.shapes == [(1, 3, 24, 24)] and result.labels.shape == (30, 45)


def test_unreadable_files_and_bad_outputs_are_reported_by_name(tmp_path):
    write_images(tmp_path, [(32, 32), (32, 32)])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    results = list(predict(gather_inputs([tmp_path]), CodeRunner(), batch_size=8))
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(results) == 3 and len(failures) == 1
    assert failures[0].message.endswith("broken.png: not a readable image")
    nan_results = list(predict(gather_inputs([tmp_path / "plant000_rgb.png"]), CodeRunner(nan=True)))
    assert isinstance(nan_results[0], Failure) and "plant000_rgb.png: embedding contains NaN" in nan_results[0].message


def test_a_runner_that_breaks_the_protocol_is_named(tmp_path):
    write_images(tmp_path, [(32, 32)])

    class Wrong(CodeRunner):
        def __call__(self, images):
            semantic, embedding, count = super().__call__(images)
            return semantic, embedding, count[:, 0]

    with pytest.raises(DataError, match="outputs do not fit its contract"):  # one line, no traceback
        list(predict(gather_inputs([tmp_path]), Wrong()))


def test_write_prediction_files(tmp_path):
    truth = write_images(tmp_path / "in", [(40, 50)])
    write_label_map(tmp_path / "gt" / "plant000_label.png", truth["plant000"])
    [result] = predict(gather_inputs([tmp_path / "in"]), CodeRunner(image_size=40))
    options = OutputOptions(panels=True, embeddings=True, gt_files=label_files(tmp_path / "gt"))
    out = tmp_path / "out"
    written = write_prediction(result, out, options)
    assert [p.name for p in written] == ["plant000_rgb_label.png", "plant000_rgb_overlay.png",
                                         "plant000_rgb_panel.png", "plant000_rgb_embedding.png"]
    assert all(p.parent == out for p in written) and not list(out.glob(".*.tmp"))
    assert np.array_equal(read_label_map(written[0]), result.labels)
    assert read_image(written[1]).shape == (40, 50, 3)
    assert read_image(written[2]).shape == (40 + 18, 3 * 50 + 2 * 4, 3)  # input | prediction | ground truth
    wrong = OutputOptions(panels=True, gt_files={"plant000": tmp_path / "small_label.png"})
    write_label_map(tmp_path / "small_label.png", np.zeros((5, 5), np.int64))
    with pytest.raises(DataError, match="small_label.png: ground truth is 5x5"):
        write_prediction(result, tmp_path / "out2", wrong)
    assert not (tmp_path / "out2").exists()  # nothing half-written


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained UNet checkpoint with a run config (32 px, 2 validation images)."""
    from checkpoints import checkpoint_of
    from instseg.checkpoint import save_checkpoint
    from instseg.train.config import TrainConfig
    from instseg.testing import tiny_model

    model = tiny_model("unet", mean=(0.5,) * 3, std=(0.25,) * 3)
    config = TrainConfig(model="unet", width=4, embedding_dim=8, image_size=32, val_size=2)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, checkpoint_of(model, plugins={}, config=asdict(config), epoch=3, step=9))
    return path


def invoke(*args):
    from instseg.cli.main import app

    return cli.invoke(app, [str(a) for a in args])


def test_predict_cli_writes_every_readable_image_and_fails_on_the_rest(checkpoint, tmp_path):
    write_images(tmp_path / "a", [(40, 48), (32, 32)])
    write_images(tmp_path / "b", [(36, 36)])  # plant000_rgb again: written as plant000_rgb-2
    (tmp_path / "a" / "broken.png").write_bytes(b"oops")
    out = tmp_path / "out"
    result = invoke("predict", checkpoint, tmp_path / "a", tmp_path / "b", "--out", out, "--cluster", "meanshift",
                    "--min-size", "2", "--batch-size", "2")
    assert isinstance(result.exception, DataError) and "1 of 4 input(s) failed" in str(result.exception)
    assert "broken.png: not a readable image" in result.output
    assert "plant000_rgb-2_label.png" in result.output
    labels = sorted(p.name for p in out.glob("*_label.png"))
    assert labels == ["plant000_rgb-2_label.png", "plant000_rgb_label.png", "plant001_rgb_label.png"]
    assert read_label_map(out / "plant000_rgb_label.png").shape == (40, 48)
    assert read_label_map(out / "plant000_rgb-2_label.png").shape == (36, 36)
    assert (out / "plant001_rgb_overlay.png").is_file()

    before = (out / "plant001_rgb_label.png").read_bytes()
    again = invoke("predict", checkpoint, tmp_path / "a" / "plant001_rgb.png", "--out", out, "--no-overlay", "--panels")
    assert again.exit_code != 0 and "plant001_rgb_label.png: exists and this run did not write it" in str(again.exception)
    assert "nothing was predicted" in str(again.exception)  # refused before the first image is read
    assert (out / "plant001_rgb_label.png").read_bytes() == before and not (out / "plant001_rgb_panel.png").exists()
    ok = invoke("predict", checkpoint, tmp_path / "a" / "plant001_rgb.png", "--out", out, "--no-overlay", "--panels",
                "--overwrite")
    assert ok.exit_code == 0, ok.output
    assert (out / "plant001_rgb_panel.png").is_file()


def test_predict_into_the_input_folder_keeps_the_users_files_and_skips_its_own(checkpoint, tmp_path):
    write_images(tmp_path, [(32, 32), (32, 32)])  # plant000_rgb.png, plant001_rgb.png
    users = {"plant000_rgb_label.png": b"the user's ground truth", "plant001_rgb_overlay.png": b"the user's picture"}
    for name, data in users.items():
        (tmp_path / name).write_bytes(data)
    for extra in ([], ["--overwrite"]):  # the user's PNGs are inputs too: never replaced, not even with --overwrite
        result = invoke("predict", checkpoint, tmp_path, "--out", tmp_path, *extra)
        assert result.exit_code != 0
        assert str(result.exception) == (
            f"{tmp_path / 'plant000_rgb_label.png'}: is one of this run's inputs and the prediction of "
            f"{tmp_path / 'plant000_rgb.png'} would replace it; inputs are never replaced, not even with --overwrite: "
            "choose another --out")
        assert all((tmp_path / name).read_bytes() == data for name, data in users.items())  # nothing replaced
    (tmp_path / "plant000_rgb_label.png").unlink()
    (tmp_path / "plant001_rgb_overlay.png").unlink()
    first = invoke("predict", checkpoint, tmp_path, "--out", tmp_path)
    assert first.exit_code == 0, first.output
    written = sorted(p.name for p in tmp_path.glob("*_label.png"))
    again = invoke("predict", checkpoint, tmp_path, "--out", tmp_path, "--overwrite")
    assert again.exit_code == 0, again.output
    assert "skipped 4 input(s)" in again.output  # its own label maps and overlays are not inputs
    assert sorted(p.name for p in tmp_path.glob("*_label.png")) == written  # no plant000_rgb_label_label.png


def test_predict_cli_rejects_bad_options(checkpoint, tmp_path):
    write_images(tmp_path, [(32, 32)])
    result = invoke("predict", checkpoint, tmp_path, "--out", tmp_path / "o", "--cluster", "dbscan")
    listed = " ".join(result.output.replace("│", " ").split())  # Typer's error box, unwrapped
    assert result.exit_code == 2 and "'dbscan' is not one of 'kmeans', 'meanshift', 'regions'" in listed
    result = invoke("predict", checkpoint, tmp_path / "nothing*.png", "--out", tmp_path / "o")
    assert isinstance(result.exception, DataError) and "no file matches" in str(result.exception)


def test_evaluate_label_folders_writes_reports_worst_first(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _, good = leaf_image(20, 20, seed=1)
    _, other = leaf_image(20, 20, seed=2)
    write_label_map(gt / "plant001_label.png", good)
    write_label_map(gt / "plant002_label.png", good)
    write_label_map(gt / "plant003_label.png", good)  # no prediction
    write_label_map(pred / "plant001_rgb_label.png", good)  # perfect
    write_label_map(pred / "plant002_rgb_label.png", other)  # poor
    write_label_map(pred / "plant009_rgb_label.png", good)  # no ground truth
    result = invoke("evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "SBD" in result.output and "±" in result.output and "without a partner" in result.output
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["images"] == 2 and report["unmatched"] == {"pred": ["plant009_rgb_label.png"],
                                                             "gt": ["plant003_label.png"]}
    assert "counter_head" not in report
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert [r["name"] for r in rows] == ["plant002", "plant001"]
    assert float(rows[1]["sbd"]) == 1.0 and float(rows[0]["sbd"]) < 1.0
    assert report["metrics"]["sbd"]["mean"] == pytest.approx((1.0 + float(rows[0]["sbd"])) / 2, abs=1e-6)


def test_evaluate_refuses_unclear_requests(tmp_path, checkpoint):
    write_label_map(tmp_path / "p" / "a_label.png", np.zeros((4, 4), np.int64))
    write_label_map(tmp_path / "g" / "a_label.png", np.zeros((5, 4), np.int64))
    result = invoke("evaluate", "--pred", tmp_path / "p")
    assert isinstance(result.exception, ConfigError) and "--pred and --gt go together" in str(result.exception)
    result = invoke("evaluate", checkpoint, "--pred", tmp_path / "p", "--gt", tmp_path / "g")
    assert isinstance(result.exception, ConfigError) and "not both" in str(result.exception)
    result = invoke("evaluate", "--pred", tmp_path / "p", "--gt", tmp_path / "g")
    assert isinstance(result.exception, DataError) and "prediction is 4x4" in str(result.exception)


def test_evaluate_model_reports_the_counter_head_separately(checkpoint, tmp_path):
    result = invoke("evaluate", checkpoint, "--cluster", "meanshift", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "counter-head DiC" in result.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["images"] == 2 and report["cluster"]["method"] == "meanshift"
    assert set(report["counter_head"]) == {"count", "dic", "abs_dic"}
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == 2 and all(r["head_count"] for r in rows)
    assert [float(r["sbd"]) for r in rows] == sorted(float(r["sbd"]) for r in rows)


def test_shards_are_disjoint_and_complete(tmp_path):
    from instseg.io.inputs import parse_shard, shard

    paths = [tmp_path / f"img{i:02d}.png" for i in (7, 3, 11, 0, 5, 9, 1)]
    parts = [shard(paths, k, 3) for k in (1, 2, 3)]
    assert sorted(p for part in parts for p in part) == sorted(paths)  # complete, and no path twice
    assert sum(len(part) for part in parts) == len(paths) and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(list(reversed(paths)), 2, 3) == parts[1]  # the input order does not matter
    assert parse_shard("3/8") == (3, 8)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(ValueError, match="expected K/N"):
            parse_shard(bad)


def test_predict_skip_existing_and_shard_from_the_cli(checkpoint, tmp_path):
    write_images(tmp_path / "in", [(32, 32)] * 5)
    out = tmp_path / "out"
    for k in (1, 2):
        result = invoke("predict", checkpoint, tmp_path / "in", "--out", out, "--shard", f"{k}/2", "--no-overlay")
        assert result.exit_code == 0, result.output
    assert len(list(out.glob("*_label.png"))) == 5  # two shards covered every input once
    (out / "plant002_rgb_label.png").unlink()  # as if the run had stopped before this one
    stamp = (out / "plant000_rgb_label.png").stat().st_mtime_ns
    result = invoke("predict", checkpoint, tmp_path / "in", "--out", out, "--skip-existing", "--no-overlay")
    assert result.exit_code == 0, result.output
    assert "4 input(s) already have their outputs" in result.output and "wrote 1 prediction(s)" in result.output
    assert (out / "plant002_rgb_label.png").exists() and (out / "plant000_rgb_label.png").stat().st_mtime_ns == stamp
    bad = invoke("predict", checkpoint, tmp_path / "in", "--out", out, "--shard", "3/2")
    assert isinstance(bad.exception, ConfigError) and "--shard '3/2'" in str(bad.exception)
