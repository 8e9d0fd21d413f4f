"""`instseg export --onnx --int8`: static quantisation judged on the validation images, refused
when validation SBD drops too far (kept with --force), and run by torch-free `instseg infer`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import onnx
import pytest

from instseg.errors import ConfigError
from instseg.errors import ExportError
from instseg.exporters.onnx import failed_path
from instseg.exporters.quantize import TaskParity
from instseg.runtime import OnnxRunner
from cli_support import invoke  # run, images: the trained tiny run of tests/cli/conftest.py


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_int8_export_reports_task_parity_and_infer_runs_it(run, images, tmp_path):
    result = invoke("export", run, "--onnx", "--int8")
    assert result.exit_code == 0, result.output
    path = run / "model-int8.onnx"
    assert "int8 against fp32 on 8 validation images" in result.output
    assert "tolerance -0.01: ok" in result.output and "int8 maps against fp32 maps" in result.output
    assert f"wrote {path}" in result.output and "calibrated on 32 training images of synthetic" in result.output
    info = OnnxRunner.open(path, "cpu").info
    assert info.precision == "int8" and info.image_size == 64 and info.dynamic_batch
    record = json.loads(metadata(path)["instseg.quantization"])
    assert record["validation"]["images"] == 8 and not record["validation"]["forced"]
    assert abs(record["validation"]["sbd_int8"] - record["validation"]["sbd_fp32"]) <= 0.01
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > 10

    out = tmp_path / "out"
    inferred = invoke("infer", path, images, "--out", out, "--provider", "cpu", "--no-overlay", "--batch-size", "2")
    assert inferred.exit_code == 0, inferred.output
    assert "model-int8.onnx (unet-cbam, dynamic H, W (multiples of 16), dynamic batch, int8," in inferred.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}_label.png" for p in images.iterdir())


def test_int8_export_is_refused_when_validation_sbd_drops_and_kept_with_force(run, images, tmp_path, monkeypatch):
    import instseg.exporters.quantize as quantize

    measured = quantize.task_parity

    def dropped(*args, **kwargs):  # as if quantisation had cost 0.05 SBD
        parity = measured(*args, **kwargs)
        return replace(parity, int8_sbd=parity.fp32_sbd - 0.05)

    monkeypatch.setattr(quantize, "task_parity", dropped)
    target = tmp_path / "m.onnx"
    refused = invoke("export", run, "--onnx", "--int8", "-o", target, "--calibration", images,
                     "--sbd-tolerance", "0.04")
    assert isinstance(refused.exception, ExportError), refused.output
    assert "validation SBD drops by 0.0500, more than --sbd-tolerance 0.04" in str(refused.exception)
    assert "tolerance -0.04: FAILED" in refused.output
    assert not target.exists() and failed_path(target).is_file()
    assert OnnxRunner.open(failed_path(target), "cpu").info.precision == "int8"

    forced = invoke("export", run, "--onnx", "--int8", "-o", target, "--force", "--calibration", images)
    assert forced.exit_code == 0, forced.output
    assert "warning: kept with --force although validation SBD drops by 0.0500" in forced.output
    assert "calibrated on 4 images of" in forced.output
    assert json.loads(metadata(target)["instseg.quantization"])["validation"]["forced"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.parity-failed.onnx"]


@pytest.mark.parametrize("drop, tolerance, ok", [(0.05, 0.01, False), (0.05, 0.1, True), (0.009, 0.01, True),
                                                  (-0.02, 0.0, True)])
def test_an_int8_graph_is_kept_when_its_sbd_drop_is_within_the_tolerance(drop, tolerance, ok):
    parity = TaskParity(images=8, fp32_sbd=0.8, int8_sbd=0.8 - drop, agreement=0.9, lowest_agreement=0.7,
                        tolerance=tolerance)
    assert parity.ok is ok


@pytest.mark.parametrize("args, message", [
    (["--int8", "--fp16"], "--int8 and --fp16 exclude each other"),
    (["--force"], "--calibration and --force apply to --int8 exports only"),
    (["--int8", "--sbd-tolerance", "-0.5"], "--sbd-tolerance -0.5: must be a number from 0 to 1"),
    (["--int8", "--calibration", "nowhere"], "--calibration nowhere: not a folder of images"),
])
def test_int8_export_refuses_unclear_requests(run, tmp_path, args, message):
    result = invoke("export", run, "--onnx", "-o", tmp_path / "m.onnx", *args)
    assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output
    assert not list(tmp_path.iterdir())
