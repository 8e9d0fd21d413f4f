"""`instseg export` and torch-free `instseg infer` on a trained model: the same label maps as
`instseg predict`, providers reported truthfully, clear errors for files that are not instseg ONNX models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from instseg.metrics.scores import symmetric_best_dice
from instseg.errors import CheckpointError, ConfigError
from instseg.io.images import read_label_map
from instseg.runtime import ModelInfo, OnnxRunner
from instseg.runtime import builds, session as sessions
from instseg.runtime.session import CPU, CUDA, ProviderReport, open_session, requested_providers
from cli_support import SIZES, invoke  # run, images: the trained tiny run of tests/cli/conftest.py


@pytest.fixture(scope="module")
def exported(run):
    """`instseg export RUN --onnx` and what it printed."""
    result = invoke("export", run, "--onnx")
    assert result.exit_code == 0, result.output
    return run / "model.onnx", result.output


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
    result = invoke("infer", path, images, "--out", onnx_out, "--provider", "cpu", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "on CPUExecutionProvider (--provider cpu" in result.output
    assert sorted(p.name for p in torch_out.iterdir()) == sorted(p.name for p in onnx_out.iterdir())
    instances, sbds = [], []
    for label in sorted(torch_out.glob("*_label.png")):
        expected, got = read_label_map(label), read_label_map(onnx_out / label.name)
        assert got.shape == expected.shape  # the input's size, grey image included
        sbd = symmetric_best_dice(got, expected)
        print(f"{label.name}: {expected.max()} instances, SBD(infer, predict) {sbd:.4f}")
        # The two runtimes' outputs agree to ~1e-7 (the export's parity check), but k-means on the weakly
        # separated embeddings of this 4-epoch model is chaotic at that scale: adding 1e-7 to PyTorch's own
        # embeddings moved SBD(grey) to 0.985. So a few boundary pixels per image may differ, not instances.
        assert sbd >= 0.98, f"{label.name}: SBD {sbd:.4f} between infer and predict"
        sbds.append(sbd)
        instances.append(int(expected.max()))
    assert np.mean(sbds) >= 0.99
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
    if CUDA not in ort.get_available_providers() or builds.cuda_problem():
        return False  # (asking ONNX Runtime for CUDA where its libraries are missing makes it log an error)
    return CUDA in ort.InferenceSession(str(path), providers=[CUDA, CPU]).get_providers()


def test_auto_reports_what_onnx_runtime_really_uses(exported):
    path, _ = exported
    session, report = open_session(path, "auto")
    assert report.active == tuple(session.get_providers())
    if CUDA in ort.get_available_providers() and builds.cuda_problem():  # onnxruntime-gpu without CUDA here
        assert report.requested == (CPU,) and "is installed but CUDA is not usable here" in report.note()
    if CUDA in report.requested and CUDA not in report.active:  # CUDA found usable, yet ONNX Runtime fell back
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


FIXTURE = Path(__file__).parents[1] / "fixtures" / "layout-0.1"  # an instseg ONNX file and an image
NO_CUBLAS = "libcublasLt.so.13: cannot open shared object file"


@pytest.fixture
def gpu_build_without_cuda(monkeypatch):
    """onnxruntime-gpu where its CUDA libraries are missing: a CUDA provider, and a reason it cannot
    run; the providers of every session ONNX Runtime is asked for are recorded."""
    asked = []
    session_class = ort.InferenceSession

    def recording(path, options=None, providers=None, **kwargs):
        asked.append(list(providers or []))
        return session_class(path, options, providers=[CPU], **kwargs)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(sessions, "cuda_problem", lambda: NO_CUBLAS)
    monkeypatch.setattr(ort, "InferenceSession", recording)
    return asked


def test_auto_asks_only_for_the_cpu_where_the_gpu_build_cannot_run_cuda(gpu_build_without_cuda):
    session, report = open_session(FIXTURE / "unet-w4.onnx", "auto")
    assert gpu_build_without_cuda == [[CPU]]  # ONNX Runtime never tries CUDA, so it logs no error of its own
    assert report.requested == report.active == (CPU,) and report.cuda_problem == NO_CUBLAS
    note = report.note()
    assert "is installed but CUDA is not usable here (libcublasLt.so.13: cannot open shared object file; " in note
    assert "needs CUDA" in note and note.endswith(f"; running on {CPU}") and "\n" not in note
    assert report.describe() == f"{CPU} (--provider auto; asked for {CPU})"


def test_provider_cuda_says_why_the_gpu_build_cannot_run_cuda(gpu_build_without_cuda):
    with pytest.raises(ConfigError, match=r"--provider cuda: .* is installed but CUDA is not usable here "
                                          r"\(libcublasLt\.so\.13: cannot open shared object file; .*\); "
                                          r"use --provider cpu or auto"):
        open_session(FIXTURE / "unet-w4.onnx", "cuda")
    assert gpu_build_without_cuda == []  # refused before any session


def test_provider_cpu_does_not_look_for_cuda(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(sessions, "cuda_problem", lambda: pytest.fail("--provider cpu looked for CUDA"))
    _, report = open_session(FIXTURE / "unet-w4.onnx", "cpu")
    assert report.requested == (CPU,) and report.note() is None


def test_requested_providers_with_a_cuda_problem():
    assert requested_providers("auto", [CUDA, CPU], NO_CUBLAS) == [CPU]
    assert requested_providers("cpu", [CUDA, CPU], NO_CUBLAS) == [CPU]
    assert requested_providers("auto", [CUDA, CPU], None) == [CUDA, CPU]
    with pytest.raises(ConfigError, match="CUDA is not usable here"):
        requested_providers("cuda", [CUDA, CPU], NO_CUBLAS)


def test_a_mix_of_onnx_runtime_builds_is_named():
    mixed = ProviderReport("cpu", (CPU,), (CPU,), mixed_builds=("onnxruntime", "onnxruntime-gpu"))
    assert mixed.note() == ("onnxruntime and onnxruntime-gpu are installed together, and each overwrites the others' "
                            "`onnxruntime` files: pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them")
    both = ProviderReport("auto", (CPU,), (CPU,), mixed_builds=("onnxruntime", "onnxruntime-gpu")).note()
    assert both.startswith("this onnxruntime has no CUDA provider") and both.endswith("then install one of them")


class FakeLibrary:
    def __init__(self, init=0, devices=1):
        self.init, self.devices = init, devices

    def cuInit(self, flags):
        return self.init

    def cuDeviceGetCount(self, count):
        count._obj.value = self.devices
        return 0


def fake_loader(missing=(), driver=None):
    loaded = []

    def load(name):
        loaded.append(name)
        if Path(name).name in missing:
            raise OSError(f"{Path(name).name}: cannot open shared object file: No such file or directory")
        return driver if Path(name).name.startswith("libcuda.so") and driver else object()
    return load, loaded


def test_the_cuda_check_names_what_does_not_load_or_start(tmp_path):
    needed = ["libcublasLt.so.13", "libcudart.so.13", "libcuda.so.1", "libc.so.6"]
    load, loaded = fake_loader(missing={"libcublasLt.so.13", "libcudart.so.13"})
    assert builds.missing_library(needed, [], load) == NO_CUBLAS and loaded == ["libcublasLt.so.13"]
    load, _ = fake_loader(missing={builds.CUDNN})
    assert builds.missing_library(needed, [], load) == f"{builds.CUDNN}: cannot open shared object file"
    load, _ = fake_loader(driver=FakeLibrary(init=100))
    assert builds.missing_library(needed, [], load) == "the CUDA driver did not start (cuInit: error 100)"
    load, _ = fake_loader(driver=FakeLibrary(devices=0))
    assert builds.missing_library(needed, [], load) == "the CUDA driver sees no GPU"
    load, loaded = fake_loader(driver=FakeLibrary())
    (tmp_path / "libcudart.so.13").write_bytes(b"")  # in the provider library's RUNPATH: loaded from there
    assert builds.missing_library(needed, [str(tmp_path)], load) is None
    assert loaded == ["libcublasLt.so.13", str(tmp_path / "libcudart.so.13"), "libcuda.so.1", "libc.so.6", builds.CUDNN]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF shared libraries")
def test_the_libraries_a_shared_library_links_are_read_without_loading_it(tmp_path):
    capi = Path(ort.__file__).parent / "capi"
    extension = next(capi.glob("onnxruntime_pybind11_state*.so"))
    needed, search = builds.linked_libraries(extension)
    assert "libc.so.6" in needed and all(Path(folder).is_absolute() for folder in search)
    provider = capi / builds.CUDA_PROVIDER_LIBRARY
    if provider.is_file():  # onnxruntime-gpu
        assert any(name.startswith("libcudart.so") for name in builds.linked_libraries(provider)[0])
    (tmp_path / "not.so").write_text("not a library")
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF file"):
        builds.linked_libraries(tmp_path / "not.so")


NO_ONNXRUNTIME = '''
import sys

class NoOnnxRuntime:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOnnxRuntime())
'''


def test_without_onnx_runtime_infer_says_what_to_install_in_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_ONNXRUNTIME)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "instseg", "infer", str(FIXTURE / "unet-w4.onnx"),
                             str(FIXTURE / "plant.png"), "--out", str(tmp_path / "out")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ONNX Runtime is not installed") and "pip install 'instseg[cpu]'" in \
        result.stderr and "'instseg[gpu]'" in result.stderr
    assert not (tmp_path / "out").exists()
    helped = subprocess.run([sys.executable, "-m", "instseg", "--help"], env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "infer" in helped.stdout  # the other commands do not need it


# What `instseg infer` may import beyond the standard library: these distributions and what they
# require (docs/deployment.md, "What the ONNX path imports"). typer and rich are the CLI's.
INFER_DISTRIBUTIONS = {"instseg", "numpy", "pillow", "tifffile", "scipy", "threadpoolctl", "onnxruntime",
                       "onnxruntime-gpu", "typer", "rich"}
# Imported by a dependency when it happens to be installed: numpy.f2py (which scipy.ndimage's
# array-API layer imports) tries charset_normalizer.
OPPORTUNISTIC = {"charset_normalizer"}
IMPORTS_PROBE = '''
import json, sys
from instseg.cli.main import main
out, sys.argv = sys.argv[1], ["instseg", "infer", *sys.argv[2:]]
code = None
try:
    main()
except SystemExit as exit:
    code = exit.code
top = sorted({name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names))
with open(out, "w") as file:
    json.dump({"code": code, "modules": top}, file)
'''


def _requirement_closure(names: set[str]) -> set[str]:
    """The distributions `names` require, transitively (extras left out), normalised."""
    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    todo, seen = [normal(n) for n in names], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if not re.search(r"\bextra\s*==", requirement.partition(";")[2]):
                todo.append(normal(re.match(r"[A-Za-z0-9._-]+", requirement).group()))
    return seen


def test_infer_imports_no_torch_and_only_what_it_needs(tmp_path):
    out = tmp_path / "imports.json"
    result = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, str(out), str(FIXTURE / "unet-w4.onnx"),
                             str(FIXTURE / "plant.png"), "--out", str(tmp_path / "predictions"), "--provider", "auto"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime:" not in result.stderr, result.stderr  # no log line of ONNX Runtime's own ("[E:onnxruntime:...")
    measured = json.loads(out.read_text())
    assert measured["code"] in (None, 0), result.stderr
    assert (tmp_path / "predictions" / "plant_label.png").is_file()
    modules = [name for name in measured["modules"] if not name.startswith("_") and name != "cython_runtime"]
    print("non-stdlib top-level packages imported by infer:", ", ".join(modules))
    assert "torch" not in modules
    allowed = _requirement_closure(INFER_DISTRIBUTIONS)
    owners = metadata.packages_distributions()
    unexpected = [name for name in modules if name not in OPPORTUNISTIC and name != "instseg"
                  and not any(re.sub(r"[-_.]+", "-", d).lower() in allowed for d in owners.get(name, []))]
    assert not unexpected, f"infer imports {unexpected}: beyond {sorted(INFER_DISTRIBUTIONS)} and their requirements"
    for needless in ("onnx", "onnxscript", "pluggy", "pycocotools", "sklearn", "tensorboard"):
        assert needless not in modules


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
    result = invoke("export", run, "--static", "64by64")  # --onnx, the only format, may be left out
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
    assert result.exit_code != 0  # the user's file is one of the images asked for, so never replaced:
    assert f"{folder / 'plant0_label.png'}: is one of this run's inputs" in str(result.exception)
    assert (folder / "plant0_label.png").read_bytes() == b"the user's ground truth"
    assert not list(folder.glob("*_overlay.png"))  # refused before anything was computed
    (folder / "plant0_label.png").unlink()
    first = invoke("infer", model, folder, "--out", folder, "--provider", "cpu", "--no-overlay")
    assert first.exit_code == 0 and "wrote 4 prediction(s)" in first.output, first.output
    (folder / "plant0_label.png").unlink()
    resumed = invoke("infer", model, folder, "--out", folder, "--provider", "cpu", "--skip-existing")  # overlays too now
    assert resumed.exit_code == 0 and "wrote 4 prediction(s)" in resumed.output, resumed.output  # none had all outputs
    again = invoke("infer", model, folder, "--out", folder, "--provider", "cpu", "--overwrite")
    assert again.exit_code == 0 and "written by an earlier instseg run" in again.output
    assert not list(folder.glob("*_label_label.png"))  # its own outputs were not predicted again


def test_infer_shards_are_disjoint_and_complete_and_skip_existing_finishes_one(exported, images, tmp_path):
    model, _ = exported
    out = tmp_path / "out"
    written = []
    for k in (1, 2, 3):
        before = set(out.glob("*")) if out.exists() else set()
        result = invoke("infer", model, images, "--out", out, "--provider", "cpu", "--shard", f"{k}/3",
                        "--no-overlay", "--threads", "2")
        assert result.exit_code == 0, result.output
        written.append({p.name for p in set(out.glob("*")) - before})
    assert [len(names) for names in written] == [2, 1, 1]  # 4 images: every 3rd of the sorted list
    assert set.union(*written) == {f"{p.stem}_label.png" for p in images.iterdir()}  # complete, and disjoint
    assert written[1] == {"plant0_label.png"}  # grey, plant0, plant1, plant2: shard 2 of 3 is the second
    (out / "plant0_label.png").unlink()  # as if shard 2 had stopped before writing it
    resumed = invoke("infer", model, images, "--out", out, "--provider", "cpu", "--shard", "2/3", "--skip-existing",
                     "--no-overlay")
    assert resumed.exit_code == 0 and "wrote 1 prediction(s)" in resumed.output, resumed.output
    assert (out / "plant0_label.png").is_file() and len(list(out.iterdir())) == 4
