"""ONNX files for tests: a graph of 1x1 convolutions with instseg's contract and metadata, which
runs in milliseconds and whose metadata a test edits at will (no export needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from instseg.runtime.metadata import ModelInfo


def info(**changes) -> ModelInfo:
    fields = dict(model="unet", backbone=None, instseg_version="0", plugins={}, exporter="dynamo", torch_version="2",
                  opset=18, precision="fp32", exported="now", source="best.pt", embedding_dim=2, max_instances=20,
                  image_size=32, multiple_of=1, static_size=None, dynamic_batch=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    return ModelInfo(**{**fields, **changes})


def tiny_onnx(path: Path, **props: str) -> Path:
    """A graph of 1x1 convolutions with an instseg contract (every pixel foreground, 2-D
    embeddings, a count) and `info()`'s metadata, `props` over it: inference in milliseconds."""
    weights = {"ws": np.array([0, 0, 0, 1, 1, 1], np.float32).reshape(2, 3, 1, 1),
               "we": np.array([1, -1, 0, 0, 1, -1], np.float32).reshape(2, 3, 1, 1),
               "wc": np.ones((1, 3, 1, 1), np.float32), "axes": np.array([2, 3], np.int64)}
    nodes = [helper.make_node("Conv", ["image", "ws"], ["semantic"]),
             helper.make_node("Conv", ["image", "we"], ["embedding"]),
             helper.make_node("Conv", ["image", "wc"], ["sum"]),
             helper.make_node("ReduceMean", ["sum", "axes"], ["mean"], keepdims=0),
             helper.make_node("Sigmoid", ["mean"], ["count"])]
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "tiny", [value("image", ["N", 3, "H", "W"])],
                              [value("semantic", ["N", 2, "H", "W"]), value("embedding", ["N", 2, "H", "W"]),
                               value("count", ["N", 1])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    for key, value in {**info().to_props(), **props}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path
