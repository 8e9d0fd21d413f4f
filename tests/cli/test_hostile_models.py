"""Hostile model files and export requests (round two): checkpoints whose record and weights
disagree or ask for an absurd model, ONNX metadata edited to nonsense, export options out of
range, and export targets that cannot or must not be written. Each is one error naming the file
or option and the range, raised before the work, and leaves every file as it was."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import instseg.exporters.output as output
import instseg.exporters.run as runs
from checkpoints import checkpoint_of, record, write_payload
from cli_support import invoke
from onnx_files import info, tiny_onnx
from instseg import limits
from instseg.checkpoint import load_checkpoint, save_checkpoint
from instseg.errors import CheckpointError, ConfigError, OutputError
from instseg.exporters.onnx import ExportRequest, export_onnx
from instseg.exporters.quantize import _workspace
from instseg.instances.clustering import ClusterParams
from instseg.io.writing import write_rgb
from instseg.models import factory
from instseg.models.registry import get_registry
from instseg.runtime.metadata import ModelInfo
from instseg.testing import tiny_model
from instseg.train.config import TrainConfig


def save_run(folder: Path, name: str = "unet", **changes) -> Path:
    """A weights-only checkpoint of tiny `name` (width 4, D 8, 32 px); `changes`: its record's fields."""
    folder.mkdir(parents=True, exist_ok=True)
    config = asdict(TrainConfig(model=name, width=4, embedding_dim=8, image_size=32, val_size=2))
    path = folder / "best.pt"
    save_checkpoint(path, checkpoint_of(tiny_model(name, mean=(0.5,) * 3, std=(0.25,) * 3),
                                        model=record(name=name, **changes), config=config, plugins={}))
    return path


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("unet"))


@pytest.fixture(scope="module")
def reseg(tmp_path_factory) -> Path:
    """The legacy exporter's model: it exports in under a second."""
    return save_run(tmp_path_factory.mktemp("reseg"), "reseg")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "plant.png"
    write_rgb(path, np.full((40, 40, 3), 120, np.uint8))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- 1, 2. a checkpoint's record is checked against its weights and a size budget, on the meta device


@pytest.mark.parametrize("command", ["predict", "export"])
def test_weights_of_another_shape_than_the_record_are_named(tmp_path, photo, command):
    path = save_run(tmp_path / "run", embedding_dim=16)  # weights of D = 8
    args = [photo, "-o", tmp_path / "out"] if command == "predict" else ["-o", tmp_path / "m.onnx"]
    result = invoke(command, path, *args)
    assert isinstance(result.exception, CheckpointError), result.output
    assert str(result.exception) == (f"{path}: weights do not fit model 'unet': tensor 'embedding_head.conv.weight' "
                                     "is 8x4x1x1, the model its record describes has 16x4x1x1")
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_model_over_the_budget_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    path = save_run(tmp_path, width=16)  # 2M parameters: 8 MB
    devices = []
    create = factory.create_model

    def spy(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return create(*args, **kwargs)

    monkeypatch.setattr(limits, "MODEL_BYTES", 2**20)
    monkeypatch.setattr(factory, "create_model", spy)
    with pytest.raises(CheckpointError) as error:
        factory.load_trained(path)
    assert str(error.value) == (f"{path}: model 'unet' (width 16) would hold 2M parameters (7.68 MiB), "
                                "more than the 1 MiB instseg builds")
    assert devices == ["meta"]


@pytest.mark.parametrize("changes, message", [
    ({"width": 1024}, "field 'model.width' has an invalid value 1024 (expected null or 1..128)"),
    ({"embedding_dim": 4096}, "field 'model.embedding_dim' has an invalid value 4096 (expected 1..128)"),
    ({"kwargs": {"up": "sideways"}}, "model 'unet' cannot be built from its record (unknown up-sampling 'sideways'; "
                                     "choose from bilinear, transposed)"),
])
def test_a_record_asking_for_an_absurd_or_impossible_model_is_one_line(tmp_path, changes, message):
    payload = checkpoint_of(tiny_model("unet"), model=record(**changes)).to_payload()
    path = write_payload(tmp_path / "m.pt", {k: v for k, v in payload.items() if k not in ("format", "format_version")})
    with pytest.raises(CheckpointError) as error:
        factory.load_trained(path)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("change, message", [
    ({"scale": 64}, "field 'config.scale' has an invalid value 64 (expected null or 1/64..2 "
                    "(at most image_size / 16))"),
    ({"seed": -1}, "field 'config.seed' has an invalid value -1 (expected 0..4294967295)"),
    ({"delta_d": float("nan")}, "field 'config.delta_d' has an invalid value nan (expected a finite number above 0)"),
    ({"cluster": "dbscan"}, "field 'config.cluster' has an invalid value 'dbscan' (expected one of auto, kmeans, "
                            "meanshift, regions, seeds)"),
    ({"image_size": 4096}, "field 'config.image_size' has an invalid value 4096 (expected 16..2048 pixels)"),
])
def test_config_values_that_loading_uses_are_checked_with_their_range(tmp_path, change, message):
    payload = checkpoint_of(tiny_model("unet"), config={"image_size": 32, **change}).to_payload()
    path = write_payload(tmp_path / "m.pt", {k: v for k, v in payload.items() if k not in ("format", "format_version")})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == f"{path}: {message}"


# -- 3. ONNX metadata: every number bounded so that the work stays bounded ------------------------------


def cluster(**values) -> str:
    return json.dumps({**asdict(ClusterParams()), **values})


@pytest.mark.parametrize("key, value, message", [
    ("instseg.scale", "64", "instseg.scale is '64', expected a number in 1/64..2"),
    ("instseg.static_size", "100000x100000",
     "instseg.static_size is '100000x100000', expected H and W within 16..2048"),
    ("instseg.image_size", "4096", "instseg.image_size is 4096, expected 16..2048"),
    ("instseg.cluster", cluster(restarts=10**9), "instseg.cluster restarts is 1000000000, expected 1..16"),
    ("instseg.cluster", cluster(iterations=10**9), "instseg.cluster iterations is 1000000000, expected 1..100"),
    ("instseg.cluster", cluster(sample_size=2**40), "instseg.cluster sample_size is 1099511627776, expected 1..16384"),
    ("instseg.cluster", cluster(max_clusters=10**9), "instseg.cluster max_clusters is 1000000000, expected 1..1024"),
    ("instseg.cluster", cluster(seed=-1), "instseg.cluster seed is -1, expected 0..4294967295"),
    ("instseg.cluster", cluster(min_size=1.5), "instseg.cluster min_size is 1.5, expected 0..2147483647"),
    ("instseg.cluster", cluster(bandwidth=float("inf")), "instseg.cluster bandwidth is inf, expected a finite number "
                                                        "above 0"),
    ("instseg.cluster", cluster(fill_holes="no"), "instseg.cluster fill_holes is 'no', expected true or false"),
])
def test_onnx_metadata_out_of_range_names_the_key_and_the_range(key, value, message):
    with pytest.raises(CheckpointError) as error:
        ModelInfo.from_props({**info().to_props(), key: value}, "m.onnx")
    assert str(error.value) == f"m.onnx: metadata {message}"


def test_the_largest_values_in_range_are_accepted():
    props = {**info(image_size=2048).to_props(), "instseg.scale": "64", "instseg.static_size": "2048x2048",
             "instseg.cluster": cluster(restarts=16, iterations=100, sample_size=2**14, max_clusters=1024)}
    read = ModelInfo.from_props(props, "m.onnx")
    assert (read.scale, read.static_size, read.cluster.restarts) == (64, (2048, 2048), 16)


def test_infer_refuses_edited_metadata_before_the_first_image(tmp_path, photo):
    good = tiny_onnx(tmp_path / "good.onnx")
    result = invoke("infer", good, photo, "-o", tmp_path / "out", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    edited = tiny_onnx(tmp_path / "edited.onnx", **{"instseg.scale": "64"})  # was a ZeroDivisionError
    result = invoke("infer", edited, photo, "-o", tmp_path / "edited", "--provider", "cpu")
    assert isinstance(result.exception, CheckpointError)
    assert str(result.exception) == f"{edited}: metadata instseg.scale is '64', expected a number in 1/64..2"
    assert not (tmp_path / "edited").exists()


# -- 4, 5. export options are checked before any work ---------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--static", "7x7"], "--static 7x7: H and W must be 16..2048 pixels"),
    (["--static", "100000x100000"], "--static 100000x100000: H and W must be 16..2048 pixels"),
    (["--static", "40x72"], "--static 40x72: H and W must be multiples of 16 for unet (its padding multiple), "
                            "e.g. 32x64"),
    (["--opset", "99"], f"--opset 99: the dynamo exporter of torch {torch.__version__} writes opset 18 to "
                        f"{torch.onnx._constants.ONNX_MAX_OPSET}"),
    (["--sbd-tolerance", "nan"], "--sbd-tolerance nan: must be a number from 0 to 1 (the validation SBD an int8 "
                                 "model may lose against fp32)"),
    (["--int8", "--sbd-tolerance", "-0.5"], "--sbd-tolerance -0.5: must be a number from 0 to 1 (the validation "
                                            "SBD an int8 model may lose against fp32)"),
])
def test_export_options_out_of_range_are_one_line_before_tracing(unet, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(runs, "run_export", lambda plan: pytest.fail("exported"))
    result = invoke("export", unet, "-o", tmp_path / "m.onnx", *args)
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception) == message
    assert not list(tmp_path.iterdir())


def test_an_opset_is_refused_before_the_checkpoint_is_read_or_past_its_exporter(reseg, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "request_from_checkpoint", lambda *args: pytest.fail("model built"))
    result = invoke("export", reseg, "-o", tmp_path / "m.onnx", "--opset", "99")
    assert isinstance(result.exception, ConfigError) and "--opset 99: the dynamo exporter" in str(result.exception)
    monkeypatch.undo()
    newest = torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    result = invoke("export", reseg, "-o", tmp_path / "m.onnx", "--opset", newest + 1)
    assert str(result.exception) == (f"--opset {newest + 1}: the legacy exporter of torch {torch.__version__} "
                                     f"writes opset 18 to {newest}")
    assert not list(tmp_path.iterdir())


# -- 6. a target that cannot be written fails first; a failed write leaves nothing ----------------------


def test_a_read_only_folder_fails_before_the_export(unet, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(output.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(runs, "request_from_checkpoint", lambda *args: pytest.fail("model built"))
    target = tmp_path / "deploy" / "m.onnx"  # not made yet: its nearest folder is probed
    result = invoke("export", unet, "-o", target)
    assert isinstance(result.exception, OutputError)
    assert str(result.exception) == f"cannot write {target}: read-only file system"
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not bind root")
def test_a_folder_without_write_permission_fails_before_the_export(unet, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = invoke("export", unet, "-o", folder / "m.onnx")
    finally:
        folder.chmod(0o755)
    assert str(result.exception) == f"cannot write {folder / 'm.onnx'}: permission denied"
    assert not list(folder.iterdir())


def test_a_full_disk_leaves_the_earlier_file_and_no_partial_one(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"an earlier export")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    spec = get_registry().model_spec("reseg")
    request = ExportRequest(model=tiny_model("reseg").eval(), name="reseg", backbone=spec.default_backbone,
                            caps=spec.export, image_size=32, cluster=ClusterParams(), plugins={}, source="test")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as error:
        export_onnx(request, target)
    assert str(error.value) == f"cannot write {target}: no space left on device"
    assert files(tmp_path) == {"m.onnx": b"an earlier export"}


def test_the_int8_workspace_names_a_full_temporary_folder_and_is_removed():
    with pytest.raises(OutputError) as error, _workspace() as work:
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "prepared.onnx"))
    assert str(error.value) == f"cannot write {work / 'prepared.onnx'}: no space left on device"
    assert not work.exists()


# -- 7. an existing file is replaced only with --overwrite ---------------------------------------------


def test_another_runs_export_is_not_replaced_without_overwrite(reseg, tmp_path):
    target = tiny_onnx(tmp_path / "m.onnx", **{"instseg.source": "runs/other/best.pt (epoch 9)"})
    before = files(tmp_path)
    result = invoke("export", reseg, "-o", target)
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == (f"--out {target}: exists and is an instseg export of runs/other/best.pt "
                                     "(epoch 9); not replaced (pass --overwrite to replace it, or choose another "
                                     "--out)")
    assert files(tmp_path) == before
    result = invoke("export", reseg, "-o", target, "--overwrite")
    assert result.exit_code == 0, result.output
    assert ModelInfo.from_props({p.key: p.value for p in onnx.load(str(target)).metadata_props}, "m").model == "reseg"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no hidden file left
