"""`instseg export` and torch-free `instseg infer` on a trained model: the same label maps as
`instseg predict`, providers reported truthfully, clear errors for files that are not instseg ONNX models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from instseg.cli.main import app
from instseg.data.synthetic import render_plant
from instseg.metrics.scores import symmetric_best_dice
from instseg.errors import CheckpointError, ConfigError
from instseg.io.images import read_label_map, write_rgb
from instseg.runtime import ModelInfo, OnnxRunner
from instseg.runtime.session import CPU, CUDA, ProviderReport, open_session, requested_providers
from training_support import single_threaded_module  # noqa: F401 - autouse: one torch thread

cli = CliRunner()
# A few epochs on synthetic leaves: enough for foreground and several instances per plant.
TRAIN = ["--model", "unet-cbam", "--width", "8", "--image-size", "64", "--epochs", "4", "--train-size", "48",
         "--val-size", "8", "--batch-size", "8", "--device", "cpu"]
SIZES = [(70, 90), (64, 64), (100, 80)]  # working sizes 64x82, 64x64, 80x64: padded to 16 by infer


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = invoke("train", *TRAIN, "--out", out, "--name", "run")
    assert result.exit_code == 0, result.output
    return out / "run"


@pytest.fixture(scope="module")
def exported(run):
    """`instseg export RUN --onnx` and what it printed."""
    result = invoke("export", run, "--onnx")
    assert result.exit_code == 0, result.output
    return run / "model.onnx", result.output


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic plants of odd sizes and a greyscale photo (imageio repeats grey into RGB)."""
    folder = tmp_path_factory.mktemp("images")
    for i, size in enumerate(SIZES):
        write_rgb(folder / f"plant{i}.png", render_plant(7, i, size, split="val")[0])
    Image.fromarray(render_plant(7, 9, (72, 72), split="val")[0][..., 1]).save(folder / "grey.png")
    return folder


def test_export_prints_parity_and_the_next_command(exported):
    path, output = exported
    assert path.is_file()
    assert "onnx.checker: ok; unet-cbam, dynamic H, W (multiples of 16), dynamic batch, fp32, dynamo exporter" in output
    rows = [line for line in output.splitlines() if "1e-3 / 1e-5" in line]
    assert [(line.split()[1], line.split()[3]) for line in rows] == [
        (shape, output) for shape in ("2x3x64x64", "1x3x80x96") for output in ("semantic", "embedding", "count")]
    assert all(line.split()[-2] == "ok" for line in rows)
    assert f"next: instseg infer {path} IMAGES... --out predictions" in output
    info = OnnxRunner.open(path, "cpu").info
    assert re.search(r"run/best\.pt \(epoch \d\)$", info.source) and info.image_size == 64 and info.cluster.method == "kmeans"


def test_predict_and_infer_write_the_same_label_maps(run, exported, images, tmp_path):
    path, _ = exported
    torch_out, onnx_out = tmp_path / "predict", tmp_path / "infer"
    assert invoke("predict", run, images, "--out", torch_out).exit_code == 0
    result = invoke("infer", path, images, "--out", onnx_out, "--provider", "cpu", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert "on CPUExecutionProvider (--provider cpu" in result.output
    assert sorted(p.name for p in torch_out.iterdir()) == sorted(p.name for p in onnx_out.iterdir())
    instances = []
    for label in sorted(torch_out.glob("*_label.png")):
        expected, got = read_label_map(label), read_label_map(onnx_out / label.name)
        assert got.shape == expected.shape  # the input's size, grey image included
        sbd = symmetric_best_dice(got, expected)
        print(f"{label.name}: {expected.max()} instances, SBD(infer, predict) {sbd:.4f}")
        assert sbd >= 0.99, f"{label.name}: SBD {sbd:.4f} between infer and predict"
        instances.append(int(expected.max()))
    assert len(instances) == 4 and min(instances) >= 2  # a model that segments, so the comparison means something


BLOCKER = '''
import os, sys

class NoTorch:
    """Importing torch fails, and every attempt is logged (even one a library would catch)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["TORCH_IMPORT_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"torch is blocked here (import of {name})")
        return None

sys.meta_path.insert(0, NoTorch())
'''


def test_runtime_and_infer_modules_import_no_torch():
    import instseg.cli.infer
    import instseg.runtime

    files = [*Path(instseg.runtime.__file__).parent.rglob("*.py"), Path(instseg.cli.infer.__file__)]
    imports = [f"{path.name}:{number}" for path in files
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if re.match(r"\s*(import|from)\s+torch\b", line)]
    assert len(files) >= 5 and not imports


def test_infer_runs_where_torch_cannot_be_imported(exported, images, tmp_path):
    path, _ = exported
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    log = tmp_path / "torch-imports.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
           "TORCH_IMPORT_LOG": str(log)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch is blocked here" in probe.stderr  # the blocker works
    log.unlink()
    result = subprocess.run([sys.executable, "-m", "instseg", "infer", str(path), str(images), "--out",
                             str(tmp_path / "out"), "--provider", "cpu"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), f"the infer path tried to import: {log.read_text()}"
    assert len(list((tmp_path / "out").glob("*_label.png"))) == 4


def test_static_fp16_export_reports_its_parity_and_infers_any_size(run, exported, images, tmp_path):
    target = tmp_path / "static-fp16.onnx"
    result = invoke("export", run, "--onnx", "--static", "48x64", "--fp16", "-o", target)
    assert result.exit_code == 0, result.output
    assert "unet-cbam, static 48x64, dynamic batch, fp16" in result.output
    assert "fp16 export vs fp32 model" in result.output and result.output.count("1e-2 / 1e-2") == 6
    runner = OnnxRunner.open(target, "cpu")
    assert runner.info.precision == "fp16" and runner.static_size == (48, 64) and runner.multiple_of == 1
    assert [i.type for i in runner.session.get_inputs()] == ["tensor(float)"]  # float32 in and out
    assert all(o.type == "tensor(float)" for o in runner.session.get_outputs())
    out = tmp_path / "out"
    assert invoke("infer", target, images, "--out", out, "--provider", "cpu").exit_code == 0
    reference = tmp_path / "ref"
    assert invoke("infer", exported[0], images, "--out", reference, "--provider", "cpu").exit_code == 0
    for i, size in enumerate(SIZES):
        labels = read_label_map(out / f"plant{i}_label.png")
        assert labels.shape == size  # resized to 48x64 for the graph, labels mapped back
        # reported, not required: a static size distorts the aspect ratio, fp16 rounds
        print(f"plant{i} {size}: SBD(static fp16, dynamic fp32) "
              f"{symmetric_best_dice(labels, read_label_map(reference / f'plant{i}_label.png')):.3f}")


# -- providers ---------------------------------------------------------------------------


def test_provider_lists_asked_for():
    assert requested_providers("cpu", [CUDA, CPU]) == [CPU]
    assert requested_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert requested_providers("auto", [CPU]) == [CPU]
    assert requested_providers("cuda", ["TensorrtExecutionProvider", CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(ConfigError, match="--provider cuda: this onnxruntime build has no CUDA provider"):
        requested_providers("cuda", [CPU])
    with pytest.raises(ConfigError, match="--provider tpu: choose from auto, cpu, cuda"):
        requested_providers("tpu", [CPU])


def test_a_fallback_to_the_cpu_is_said_plainly():
    fell_back = ProviderReport("auto", (CUDA, CPU), (CPU,))
    assert fell_back.cuda_unavailable and "could not start its CUDA provider" in fell_back.note()
    assert "runs on the CPU" in fell_back.note()
    assert ProviderReport("auto", (CUDA, CPU), (CUDA, CPU)).note() is None
    assert ProviderReport("cpu", (CPU,), (CPU,)).note() is None
    assert "no CUDA provider" in ProviderReport("auto", (CPU,), (CPU,)).note()
    assert fell_back.describe() == f"{CPU} (--provider auto; asked for {CUDA}, {CPU})"


def cuda_usable(path) -> bool:
    if CUDA not in ort.get_available_providers():
        return False
    return CUDA in ort.InferenceSession(str(path), providers=[CUDA, CPU]).get_providers()


def test_auto_reports_what_onnx_runtime_really_uses(exported):
    path, _ = exported
    session, report = open_session(path, "auto")
    assert report.active == tuple(session.get_providers())
    if CUDA in report.requested and CUDA not in report.active:  # onnxruntime-gpu without CUDA libraries
        assert "could not start its CUDA provider" in report.note()
    runner = OnnxRunner.open(path, "auto")
    assert runner.providers.active[-1] == CPU


def test_provider_cuda_is_an_error_when_cuda_cannot_be_used(exported, images, tmp_path):
    path, _ = exported
    if cuda_usable(path):
        pytest.skip("ONNX Runtime can use CUDA on this machine, so --provider cuda is not an error here")
    result = invoke("infer", path, images, "--out", tmp_path, "--provider", "cuda")
    assert isinstance(result.exception, ConfigError) and "--provider cuda:" in str(result.exception)
    assert "use --provider cpu" in str(result.exception)
    assert not list(tmp_path.iterdir())  # nothing written


def test_provider_cuda_runs_on_cuda_when_present(exported, images, tmp_path):
    path, _ = exported
    if not cuda_usable(path):
        pytest.skip(f"no usable CUDA for ONNX Runtime here (available providers: "
                    f"{', '.join(ort.get_available_providers())}; the CUDA provider needs a GPU and CUDA "
                    f"{getattr(ort, 'cuda_version', '')} / cuDNN 9 libraries)")
    result = invoke("infer", path, images, "--out", tmp_path, "--provider", "cuda")
    assert result.exit_code == 0, result.output
    assert f"on {CUDA}" in result.output


# -- bad input ---------------------------------------------------------------------------


def test_files_that_are_not_instseg_onnx_models_are_clear_errors(tmp_path, images):
    (tmp_path / "notes.onnx").write_text("not a model")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, tmp_path / "plain.onnx")
    model.ir_version = 99
    onnx.save(model, tmp_path / "future.onnx")
    cases = {
        "notes.onnx": "notes.onnx: not a loadable ONNX model (Protobuf parsing failed.)",
        "plain.onnx": "plain.onnx: an ONNX model without instseg metadata (not written by `instseg export`)",
        "future.onnx": "future.onnx: not a loadable ONNX model (Unsupported model IR version: 99, max supported",
        "missing.onnx": "missing.onnx: no such file",
    }
    for name, message in cases.items():
        result = invoke("infer", tmp_path / name, images, "--out", tmp_path / "out", "--provider", "cpu")
        assert isinstance(result.exception, CheckpointError), (name, result.output)
        assert message in str(result.exception)
    result = invoke("infer", tmp_path, images, "--out", tmp_path / "out")
    assert "is a folder, not an ONNX file" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_metadata_that_is_damaged_or_newer_is_refused(exported):
    props = dict(OnnxRunner.open(exported[0], "cpu").session.get_modelmeta().custom_metadata_map)
    assert ModelInfo.from_props(props, "m.onnx").model == "unet-cbam"
    with pytest.raises(CheckpointError, match="m.onnx: instseg metadata lacks 'instseg.max_instances'"):
        ModelInfo.from_props({k: v for k, v in props.items() if k != "instseg.max_instances"}, "m.onnx")
    with pytest.raises(CheckpointError, match="m.onnx: instseg ONNX format 2 is newer than this instseg"):
        ModelInfo.from_props({**props, "instseg.format": "2"}, "m.onnx")
    with pytest.raises(CheckpointError, match="m.onnx: metadata instseg.cluster: unknown clustering method"):
        ModelInfo.from_props({**props, "instseg.cluster": '{"method": "dbscan"}'}, "m.onnx")


def test_export_refuses_unclear_requests(run, tmp_path):
    result = invoke("export", run)
    assert isinstance(result.exception, ConfigError) and "--onnx" in str(result.exception)
    result = invoke("export", run, "--onnx", "--static", "64by64")
    assert isinstance(result.exception, ConfigError) and "--static: '64by64' is not a size like 256x320" in str(
        result.exception)
    result = invoke("export", run, "--onnx", "-o", tmp_path)
    assert isinstance(result.exception, ConfigError) and "is a folder" in str(result.exception)
    result = invoke("export", tmp_path / "nothing", "--onnx")
    assert isinstance(result.exception, CheckpointError) and "no such checkpoint" in str(result.exception)
    result = invoke("export", run, "--onnx", "--opset", "17", "-o", tmp_path / "m.onnx")
    assert "--opset 17: instseg exports opset 18 or newer" in str(result.exception)
    assert not list(tmp_path.iterdir())


def test_infer_into_the_input_folder_keeps_the_users_files(exported, images, tmp_path):
    import shutil

    model, _ = exported
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    (folder / "plant0_label.png").write_bytes(b"the user's ground truth")
    result = invoke("infer", model, folder, "--out", folder, "--provider", "cpu")
    assert result.exit_code != 0 and "plant0_label.png: exists and this run did not write it" in result.output
    assert (folder / "plant0_label.png").read_bytes() == b"the user's ground truth"
    (folder / "plant0_label.png").unlink()
    resumed = invoke("infer", model, folder, "--out", folder, "--provider", "cpu", "--resume")  # only plant0 is left
    assert resumed.exit_code == 0 and "wrote 1 prediction(s)" in resumed.output, resumed.output
    again = invoke("infer", model, folder, "--out", folder, "--provider", "cpu", "--overwrite")
    assert again.exit_code == 0 and "written by an earlier instseg run" in again.output
    assert not list(folder.glob("*_label_label.png"))  # its own outputs were not predicted again


def test_infer_shards_are_disjoint_and_complete_and_resume_finishes_one(exported, images, tmp_path):
    model, _ = exported
    out = tmp_path / "out"
    written = []
    for k in (1, 2, 3):
        before = set(out.glob("*")) if out.exists() else set()
        result = invoke("infer", model, images, "--out", out, "--provider", "cpu", "--shard", f"{k}/3",
                        "--no-overlay", "--workers", "2")
        assert result.exit_code == 0, result.output
        written.append({p.name for p in set(out.glob("*")) - before})
    assert [len(names) for names in written] == [2, 1, 1]  # 4 images: every 3rd of the sorted list
    assert set.union(*written) == {f"{p.stem}_label.png" for p in images.iterdir()}  # complete, and disjoint
    assert written[1] == {"plant0_label.png"}  # grey, plant0, plant1, plant2: shard 2 of 3 is the second
    (out / "plant0_label.png").unlink()  # as if shard 2 had stopped before writing it
    resumed = invoke("infer", model, images, "--out", out, "--provider", "cpu", "--shard", "2/3", "--resume",
                     "--no-overlay")
    assert resumed.exit_code == 0 and "wrote 1 prediction(s)" in resumed.output, resumed.output
    assert (out / "plant0_label.png").is_file() and len(list(out.iterdir())) == 4
