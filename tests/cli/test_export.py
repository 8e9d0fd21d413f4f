"""ONNX export of every registered model: parity with PyTorch, metadata, dynamic shapes, failures.

Every output is compared at rtol 1e-3, atol 1e-5 (exporters.onnx.TOLERANCES); the built-ins
stay within ~1e-7 of PyTorch, so no output needs a looser tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from instseg import ExportCaps, ModelSpec, hookimpl
from instseg.instances.clustering import ClusterParams
from instseg.models.registry import get_registry, list_models
from instseg.errors import ConfigError, ExportError
from instseg.exporters.onnx import (TOLERANCES, ExportRequest, Tolerance, check_parity, export_graph,
                                    export_onnx, failed_path, plan_export, sample_images)
from instseg.models.architectures.unet import UNetDecoder
from instseg.runtime import OnnxRunner
from instseg.testing import check_onnx_parity, tiny_model

MODELS = list_models()  # built-ins only (tests/conftest.py); a new plugin model joins automatically


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> ExportResult of its tiny instance, exported once per module (exports are slow)."""
    folder = tmp_path_factory.mktemp("onnx")
    results = {}

    def export(name):
        if name not in results:
            results[name] = check_onnx_parity(name, folder / f"{name}.onnx")
        return results[name]

    return export


@pytest.mark.parametrize("name", MODELS)
def test_model_exports_with_parity_at_two_shapes(name, exported):
    spec = get_registry().model_spec(name)
    result = exported(name)
    assert result.path.name == f"{name}.onnx" and result.path.is_file() and result.ok
    assert result.plan.exporter == spec.export.exporter and result.info.exporter == spec.export.exporter
    # every output at the export shape and, for a dynamic graph, at another batch, H and W
    shapes = list(dict.fromkeys(row.shape for row in result.parity))
    assert len(shapes) == 2 and shapes[0][0] == 2 and shapes[1][0] == 1
    if spec.export.dynamic_hw:
        assert shapes[0][2:] != shapes[1][2:] and shapes[1][2] != shapes[1][3]
    assert [row.output for row in result.parity] == ["semantic", "embedding", "count"] * 2
    assert all(row.tolerance == TOLERANCES[row.output] == Tolerance(1e-3, 1e-5) for row in result.parity)
    print(f"{name}: {result.plan.describe()}; max abs error "
          + ", ".join(f"{r.output} {r.max_abs:.1e}" for r in result.parity[:3]))

    # the runtime reads what it needs back from the file, and its padding matches the model's
    runner = OnnxRunner.open(result.path, "cpu")
    model = tiny_model(name).eval()
    assert (runner.info.model, runner.multiple_of, runner.info.dynamic_batch) == \
        (spec.name, model.multiple_of, spec.export.dynamic_batch)
    assert runner.info.embedding_dim == 8 and runner.info.plugins == {"instseg": result.info.instseg_version}
    images = sample_images((1, 3, 40, 56), seed=3)
    k = model.multiple_of
    padded = np.pad(images, ((0, 0), (0, 0), (0, -40 % k), (0, -56 % k)), mode="edge")
    with torch.no_grad():
        expected = model(torch.from_numpy(images))
    for output, got, want in zip(("semantic", "embedding", "count"), runner(padded), expected):
        got = got[..., :40, :56] if got.ndim == 4 else got
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-5, err_msg=f"{name} {output}")


def test_metadata_records_provenance_and_the_runtime_contract(exported):
    result = exported("unet")
    proto = onnx.load(str(result.path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["instseg.model"] == "unet" and props["instseg.backbone"] == "unet-encoder"
    assert props["instseg.exporter"] == "dynamo" and props["instseg.opset"] == "18" == str(
        next(o.version for o in proto.opset_import if o.domain == ""))
    assert props["instseg.torch"] == torch.__version__ and props["instseg.precision"] == "fp32"
    assert json.loads(props["instseg.plugins"]) == {"instseg": props["instseg.version"]}
    assert json.loads(props["instseg.dynamic_axes"]) == {"batch": True, "height": True, "width": True}
    assert props["instseg.multiple_of"] == "16" and props["instseg.static_size"] == ""
    assert props["instseg.image_size"] == "64" and props["instseg.max_instances"] == "20"
    assert json.loads(props["instseg.mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props["instseg.cluster"])["method"] == "kmeans"
    assert props["instseg.exported"].endswith("+00:00")
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["semantic", "embedding", "count"]
    onnx.checker.check_model(proto, full_check=True)
    assert len(proto.graph.initializer) > 0 and not any(  # weights inside: one file, no external data
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def static_plugin(register):
    register(ModelSpec(name="static-unet", decoder=UNetDecoder, default_backbone="unet-encoder",
                       export=ExportCaps(dynamic_hw=False, dynamic_batch=False, notes="test: a fixed-size graph")))


def test_model_declared_static_exports_at_one_size_and_runs_one_image_at_a_time(tmp_path):
    import types

    plugin = types.ModuleType("static_plugin")
    plugin.register_models = hookimpl(static_plugin)
    get_registry().register_plugin(plugin)
    result = check_onnx_parity("static-unet", tmp_path / "static.onnx", image_size=48)
    assert result.plan.static_size == (48, 48) and not result.plan.dynamic_batch
    assert [row.shape for row in result.parity] == [(1, 3, 48, 48)] * 3  # nothing dynamic to check twice
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 48, 48]
    runner = OnnxRunner.open(result.path, "cpu")
    assert runner.static_size == (48, 48) and runner.multiple_of == 1
    semantic, embedding, count = runner(sample_images((3, 3, 48, 48)))  # three images, one run each
    assert semantic.shape == (3, 2, 48, 48) and embedding.shape == (3, 8, 48, 48) and count.shape == (3, 1)


def request(name="unet", **changes) -> ExportRequest:
    spec = get_registry().model_spec(name)
    fields = dict(model=tiny_model(name).eval(), name=name, backbone=spec.default_backbone, caps=spec.export,
                  image_size=32, cluster=ClusterParams(), plugins={}, source="test")
    return ExportRequest(**{**fields, **changes})


def test_opset_below_18_is_refused():
    with pytest.raises(ConfigError, match="--opset 17: instseg exports opset 18 or newer"):
        export_graph(tiny_model("unet"), plan_export(ExportCaps(), 16, 32), opset=17)


def test_exporter_that_cannot_handle_a_model_is_one_clear_error():
    # SegNet's MaxUnpool2d: the legacy exporter fails, and says so in one line
    plan = plan_export(ExportCaps(exporter="legacy"), 32, 32)
    with pytest.raises(ExportError, match=r"^segnet: the legacy ONNX exporter failed \(\w+: .+\); if only the other"):
        export_graph(tiny_model("segnet").eval(), plan, name="segnet")


class Wrong(torch.nn.Module):
    """A stand-in whose outputs differ from the exported model: parity must catch it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        semantic, embedding, count = self.model(x)
        return semantic, embedding + 1e-3, count


def test_parity_failure_keeps_the_good_file_and_writes_the_bad_one_aside(tmp_path, monkeypatch):
    import instseg.exporters.onnx as exporters

    target = tmp_path / "model.onnx"
    target.write_bytes(b"an earlier, good export")

    def wrong_parity(model, path, plan, tolerances):
        return check_parity(Wrong(model), path, plan, tolerances)

    monkeypatch.setattr(exporters, "check_parity", wrong_parity)
    result = export_onnx(request("reseg"), target)  # legacy exporter: fast
    assert not result.ok and result.path == failed_path(target) == tmp_path / "model.parity-failed.onnx"
    assert target.read_bytes() == b"an earlier, good export" and result.path.is_file()
    rows = {row.output: row for row in result.parity}
    assert not rows["embedding"].ok and rows["embedding"].max_abs == pytest.approx(1e-3, rel=1e-3)
    assert rows["semantic"].ok and rows["count"].ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.parity-failed.onnx"]  # no temp left


def test_position_channels_export_with_parity_at_two_shapes(tmp_path):
    """The coordinates are computed from the input's shape inside the graph, so a dynamic
    graph adds the right ones at a size it was not exported at."""
    result = check_onnx_parity("unet", tmp_path / "positions.onnx", position_scale=8.0)
    assert result.ok and len({row.shape for row in result.parity}) == 2
    runner = OnnxRunner.open(result.path, "cpu")
    _, embedding, _ = runner(sample_images((1, 3, 48, 80)))
    assert np.ptp(embedding[0, 1]) > np.ptp(embedding[0, 2]) + 4  # columns span 80 / 8 units
