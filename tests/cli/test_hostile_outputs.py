"""Hostile input, round two: what `predict` / `infer` write. Thread counts are bounded by the
CPUs, clustering by a pixel budget and full-size pictures by bands; one run writes into a
folder at a time; `--overwrite` replaces outputs, never inputs; `--skip-existing` needs every
output; the folder is checked before anything is computed; prediction files are synced once
per batch."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from checkpoints import checkpoint_of
from instseg.checkpoint import save_checkpoint
from instseg.cli.main import app
from instseg.errors import OutputError
from instseg.instances.clustering import ClusterParams
from instseg.io import writing as written_files
from instseg.io.images import read_label_map, resize_labels
from instseg.io.writing import write_label_map
from instseg.io.inputs import gather_inputs
from instseg.io.pictures import overlay
from instseg.predict import out_folder, outputs, pipeline, stages
from instseg.predict.outputs import OutputOptions, predict_folder
from instseg.predict.pipeline import predict
from instseg.testing import tiny_model
from instseg.train.config import TrainConfig
from predict_support import CodeRunner, leaf_image, write_images
from training_support import subprocess_env

cli = CliRunner()
ONNX = Path(__file__).parents[1] / "fixtures" / "layout-0.1" / "unet-w4.onnx"  # a 32 px instseg export


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = tiny_model("unet", mean=(0.5,) * 3, std=(0.25,) * 3)
    config = TrainConfig(model="unet", width=4, embedding_dim=8, image_size=32, val_size=2)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, checkpoint_of(model, plugins={}, config=asdict(config)))
    return path


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(stages, "usable_cpus", lambda: 2)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- 1. thread counts: at most the CPUs, and said so ------------------------------------------------


def test_thread_counts_are_bounded_by_the_available_cpus(two_cpus):
    assert stages.bounded_threads(10000) == 2 and stages.bounded_threads(1) == 1 and stages.at_most_cpus(0) == 0
    assert stages.threads_note(10000, 2, "threads per stage") == \
        "using 2 threads per stage (asked for 10000; 2 CPUs available)"
    assert stages.threads_note(2, 2, "threads per stage") == ""


def test_the_default_threads_are_this_process_s_share_of_the_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)  # 2 of a machine's CPUs
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert stages.default_workers() == 2 and stages.bounded_threads(None) == 2


def test_predict_and_infer_lower_huge_thread_counts_and_say_so(checkpoint, tmp_path, two_cpus, monkeypatch):
    write_images(tmp_path / "in", [(32, 32)])
    result = invoke("predict", checkpoint, tmp_path / "in", "-o", tmp_path / "p", "--threads", "10000")
    assert result.exit_code == 0, result.output
    assert "note: using 2 threads per stage (asked for 10000; 2 CPUs available)" in result.output
    from instseg.runtime import OnnxRunner

    opened = []
    real_open = OnnxRunner.open
    monkeypatch.setattr(OnnxRunner, "open", lambda path, provider, threads: opened.append(threads)
                        or real_open(path, provider, threads))
    result = invoke("infer", ONNX, tmp_path / "in", "-o", tmp_path / "i", "--provider", "cpu",
                    "--intra-op-threads", "10000", "--threads", "10000")
    assert result.exit_code == 0, result.output
    assert opened == [2]  # ONNX Runtime never starts 10000 threads
    assert "using 2 ONNX Runtime intra-op threads (asked for 10000; 2 CPUs available)" in result.output
    assert "using 2 threads per stage (asked for 10000; 2 CPUs available)" in result.output


# -- 2. memory and time bounded by the working size ----------------------------------------------------


class BudgetRunner(CodeRunner):
    """CodeRunner clustered at full resolution (what real runs do)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cluster = ClusterParams(method="kmeans", full_resolution=True)


def test_clustering_stays_within_the_pixel_budget_and_the_label_map_is_complete(tmp_path, monkeypatch):
    clustered = []
    real = pipeline.instances_from_outputs
    monkeypatch.setattr(pipeline, "instances_from_outputs",
                        lambda semantic, *args: clustered.append(semantic.shape[1:]) or real(semantic, *args))
    monkeypatch.setattr(pipeline, "MAX_CLUSTER_PIXELS", 120 * 90)
    write_images(tmp_path / "in", [(600, 450)])
    [result] = predict(gather_inputs([tmp_path / "in"]), BudgetRunner(image_size=32))
    assert clustered == [(120, 90)]  # 600 x 450 scaled into the budget, aspect kept; not the input's 270,000 pixels
    assert result.labels.shape == (600, 450)
    ids = np.unique(result.labels)
    assert ids[0] == 0 and list(ids[1:]) == list(range(1, len(ids))) and len(ids) > 2  # every instance, 1..N
    clustered.clear()
    monkeypatch.setattr(pipeline, "MAX_CLUSTER_PIXELS", 100)  # below the working size: cluster at the working size
    [result] = predict(gather_inputs([tmp_path / "in"]), BudgetRunner(image_size=32))
    assert clustered == [(43, 32)] and result.labels.shape == (600, 450)


def peak_bytes(fn, *args):
    """The peak of numpy's allocations (traced by tracemalloc) while `fn(*args)` runs, and its result."""
    tracemalloc.start()
    try:
        result = fn(*args)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_full_size_pictures_and_label_maps_take_little_more_than_their_result(monkeypatch):
    from instseg.io import pictures

    monkeypatch.setattr(pictures, "BAND_PIXELS", 2**14)
    image, _ = leaf_image(800, 600)
    labels = resize_labels(leaf_image(80, 60, seed=3)[1].astype(np.int32), (800, 600))
    peak, drawn = peak_bytes(overlay, image, labels)
    # beyond the picture, a few float copies of one band (64 bytes a pixel); drawn at once, 16 of the image's
    assert drawn.shape == (800, 600, 3) and peak - drawn.nbytes < 64 * pictures.BAND_PIXELS < 0.05 * image.nbytes * 16
    peak, big = peak_bytes(resize_labels, labels[::10, ::10], (800, 600))
    assert big.shape == (800, 600) and big.dtype == labels.dtype and peak < 1.2 * big.nbytes  # was 3 copies
    reference = np.asarray(Image.fromarray(labels[::10, ::10], "I").resize((600, 800), Image.NEAREST))
    assert np.array_equal(big, reference)  # Pillow's own NEAREST mapping


# -- 3. one writer per folder; inputs are never replaced ------------------------------------------------


def test_a_second_run_into_a_folder_in_use_is_refused_by_name(checkpoint, tmp_path):
    write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    out.mkdir()
    with out_folder.locked(out):
        result = invoke("predict", checkpoint, tmp_path / "in", "-o", out)
        assert isinstance(result.exception, OutputError)
        assert str(result.exception) == (
            f"--out {out}: another instseg run (process {os.getpid()}) is writing into this folder; wait for it "
            "to finish, or choose another --out (its lock: .instseg.lock)")
        assert list(out.iterdir()) == [out / ".instseg.lock"]  # nothing written
    assert list(out.iterdir()) == []  # the lock goes with the run that held it
    result = invoke("predict", checkpoint, tmp_path / "in", "-o", out)
    assert result.exit_code == 0, result.output
    assert not (out / ".instseg.lock").exists()


def test_the_parts_of_a_sharded_run_share_a_folder_but_not_a_part(checkpoint, tmp_path):
    write_images(tmp_path / "in", [(32, 32)] * 2)
    out = tmp_path / "out"
    out.mkdir()
    with out_folder.locked(out, (1, 2)):  # part 1 of 2 is running
        other = invoke("predict", checkpoint, tmp_path / "in", "-o", out, "--shard", "2/2")
        assert other.exit_code == 0, other.output
        same = invoke("predict", checkpoint, tmp_path / "in", "-o", out, "--shard", "1/2")
        assert f"(process {os.getpid()}) is writing shard 1/2 into this folder" in str(same.exception)
        whole = invoke("predict", checkpoint, tmp_path / "in", "-o", out, "--skip-existing")
        assert "is writing into this folder" in str(whole.exception)
    assert sorted(p.name for p in out.iterdir()) == ["plant001_rgb_label.png", "plant001_rgb_overlay.png"]


def test_the_lock_refusal_is_one_line_from_the_real_entry_point(tmp_path):
    write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    out.mkdir()
    with out_folder.locked(out):
        done = subprocess.run([sys.executable, "-m", "instseg", "infer", ONNX, tmp_path / "in", "-o", out,
                               "--provider", "cpu"], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line == (f"error: --out {out}: another instseg run (process {os.getpid()}) is writing into this "
                    "folder; wait for it to finish, or choose another --out (its lock: .instseg.lock)")


def test_overwrite_never_replaces_an_input(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, [(32, 32)])  # plant000_rgb.png
    _, truth = leaf_image(32, 32)
    write_label_map(photos / "plant000_rgb_label.png", truth)  # the user's own mask, also an image of the folder
    before = snapshot(photos)
    result = invoke("predict", checkpoint, photos, "-o", photos, "--overwrite")
    assert str(result.exception) == (
        f"{photos / 'plant000_rgb_label.png'}: is one of this run's inputs and the prediction of "
        f"{photos / 'plant000_rgb.png'} would replace it; inputs are never replaced, not even with --overwrite: "
        "choose another --out")
    coco = invoke("predict", checkpoint, photos / "plant000_rgb.png", "-o", tmp_path / "o", "--overwrite",
                  "--coco", photos / "plant000_rgb.png")
    assert str(coco.exception) == (
        f"{photos / 'plant000_rgb.png'}: is one of this run's inputs and the --coco results would replace it; "
        "inputs are never replaced, not even with --overwrite: choose another --coco file")
    gt = tmp_path / "gt"
    write_label_map(gt / "plant000_rgb_label.png", truth)  # ground truth where the outputs would go
    (tmp_path / "linked.png").hardlink_to(photos / "plant000_rgb.png")  # another name of an input
    os.symlink(photos / "plant000_rgb.png", tmp_path / "linked_label.png")
    onto_gt = [photos / "plant000_rgb.png", "-o", gt, "--gt", gt, "--panels"]
    onto_a_link = [tmp_path / "linked.png", "-o", tmp_path]
    for args in (onto_gt, onto_a_link):
        refused = invoke("predict", checkpoint, *args, "--overwrite")
        assert isinstance(refused.exception, OutputError) and "is one of this run's inputs" in str(refused.exception)
    assert snapshot(photos) == before and np.array_equal(read_label_map(gt / "plant000_rgb_label.png"), truth)


# -- 4. --skip-existing: done only when every output is there, whole -------------------------------------


def test_skip_existing_finishes_inputs_a_full_disk_left_without_an_overlay(tmp_path, monkeypatch):
    write_images(tmp_path / "in", [(32, 32)] * 3)
    paths, out = gather_inputs([tmp_path / "in"]), tmp_path / "out"
    real = outputs.write_rgb

    def full_disk(path, *args, **kwargs):
        if path.name == "plant001_rgb_overlay.png":
            raise OutputError(f"cannot write {path}: no space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_rgb", full_disk)
    result = predict_folder(paths, CodeRunner(), out)
    assert result.failures == [f"cannot write {out / 'plant001_rgb_overlay.png'}: no space left on device"]
    assert (out / "plant001_rgb_label.png").exists() and not (out / "plant001_rgb_overlay.png").exists()
    monkeypatch.setattr(outputs, "write_rgb", real)
    (out / "plant002_rgb_overlay.png").write_bytes((out / "plant002_rgb_overlay.png").read_bytes()[:-20])  # cut short
    kept = (out / "plant000_rgb_label.png").stat().st_mtime_ns
    again = predict_folder(paths, CodeRunner(), out, options=OutputOptions(skip_existing=True))
    assert again.done == [paths[0]] and not again.failures and len(again.instances) == 2  # 001 and 002 again
    assert (out / "plant000_rgb_label.png").stat().st_mtime_ns == kept
    assert all(written_files.png_is_complete(p) for p in out.glob("*.png")) and len(list(out.glob("*.png"))) == 6


def test_skip_existing_does_not_replace_a_file_instseg_did_not_write(tmp_path):
    write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "plant000_rgb_label.png").write_bytes(b"mine")  # the overlay is missing, so the input is not done
    runner = CodeRunner()
    with pytest.raises(OutputError) as error:
        predict_folder(gather_inputs([tmp_path / "in"]), runner, out, options=OutputOptions(skip_existing=True))
    assert str(error.value) == (
        f"{out / 'plant000_rgb_label.png'}: exists and is not an instseg output (yours, or cut short by a crash) "
        f"and this run did not write it, so it is not replaced (the prediction of "
        f"{tmp_path / 'in' / 'plant000_rgb.png'} would go there); nothing was predicted: pass --overwrite, or choose "
        "another --out")
    assert runner.shapes == [] and snapshot(out) == {"plant000_rgb_label.png": b"mine"}


# -- 5. the folder is checked before anything is computed; the README tour runs as printed -------------


def test_a_clash_is_found_before_the_first_image_is_read(tmp_path, monkeypatch):
    write_images(tmp_path / "in", [(32, 32)] * 3)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("plant001_rgb_overlay.png", "plant002_rgb_label.png"):
        (out / name).write_bytes(b"earlier")
    read = []
    monkeypatch.setattr(stages, "read_source", lambda *job: read.append(job) or pytest.fail("an image was read"))
    with pytest.raises(OutputError, match=r"plant001_rgb_overlay\.png: exists and this run did not write it, .*"
                                          r"1 more file\(s\) like it in .*; nothing was predicted"):
        predict_folder(gather_inputs([tmp_path / "in"]), CodeRunner(), out)
    assert read == [] and snapshot(out) == \
        {"plant001_rgb_overlay.png": b"earlier", "plant002_rgb_label.png": b"earlier"}


def test_the_readme_tour_predict_then_infer_runs_as_printed(checkpoint, tmp_path):
    tour = (Path(__file__).parents[2] / "README.md").read_text()
    assert "instseg predict RUN photos/ -o predictions " in tour
    assert "instseg infer model.onnx photos/ -o predictions-onnx " in tour
    write_images(tmp_path / "photos", [(32, 32)] * 2)
    first = invoke("predict", checkpoint, tmp_path / "photos", "-o", tmp_path / "predictions")
    assert first.exit_code == 0, first.output
    second = invoke("infer", ONNX, tmp_path / "photos", "-o", tmp_path / "predictions-onnx", "--provider", "cpu")
    assert second.exit_code == 0, second.output
    assert snapshot(tmp_path / "predictions").keys() == snapshot(tmp_path / "predictions-onnx").keys()
    same = invoke("infer", ONNX, tmp_path / "photos", "-o", tmp_path / "predictions", "--provider", "cpu")
    assert "plant000_rgb_label.png: exists and this run did not write it" in str(same.exception)
    assert "nothing was predicted" in str(same.exception)


# -- 6. fsync once per batch, unless asked ------------------------------------------------------------


@pytest.mark.parametrize("fsync", [False, True])
def test_prediction_files_are_synced_once_per_batch_unless_asked(tmp_path, monkeypatch, fsync):
    write_images(tmp_path / "in", [(32, 32)] * 9)
    synced, flags = [], []
    monkeypatch.setattr(outputs, "sync_folder", synced.append)
    real = written_files.atomic_write_bytes

    def recording(path, data, *, durable=True):
        flags.append(durable)
        real(path, data, durable=durable)

    monkeypatch.setattr(written_files, "atomic_write_bytes", recording)
    result = predict_folder(gather_inputs([tmp_path / "in"]), CodeRunner(), tmp_path / "out", batch_size=4,
                            options=OutputOptions(fsync=fsync))
    assert len(result.instances) == 9 and flags == [fsync] * 18  # label map and overlay per image
    assert synced == ([] if fsync else [tmp_path / "out"] * 3)  # after images 4 and 8, and at the end


def test_write_failures_are_named_once(tmp_path):
    write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "plant000_rgb_label.png").mkdir()  # a folder where the label map goes
    result = predict_folder(gather_inputs([tmp_path / "in"]), CodeRunner(), out,
                            options=OutputOptions(overwrite=True, overlay=False))
    assert result.failures == [f"cannot write {out / 'plant000_rgb_label.png'}: it is a folder"]
