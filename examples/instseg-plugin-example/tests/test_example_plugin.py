"""The plugin's models and backbones pass instseg.testing's checks (the ones instseg's own models pass)."""

import pytest
import torch

from instseg.testing import (
    check_backbone,
    check_backward,
    check_forward_shapes,
    check_onnx_parity,
    check_overfit,
    plugin_backbones,
    plugin_models,
)
from instseg_plugin_example import InvertedResidual, MobileNetV2Encoder

DIST = "instseg-plugin-example"
MODELS = plugin_models(DIST)
BACKBONES = plugin_backbones(DIST)


def test_registers_its_backbone_and_model():
    assert MODELS == ["mobile-unet"]
    assert BACKBONES == ["mobilenetv2-lite"]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_contract(name):
    check_backbone(name)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_serves_builtin_decoders(name):
    check_forward_shapes("unet-cbam", backbone=name, shapes=((64, 64), (40, 56)))


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name):
    check_forward_shapes(name)


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients(name):
    check_backward(name)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_two_images(name):
    check_overfit(name, steps=40, lr=5e-3)


@pytest.mark.parametrize("name", MODELS)
def test_exports_to_onnx_as_declared_with_parity(name, tmp_path):
    # dynamo exporter, dynamic batch, H and W (the spec's ExportCaps); ONNX Runtime matches
    # PyTorch on all three outputs at two shapes, and the file records this distribution
    result = check_onnx_parity(name, tmp_path / f"{name}.onnx")
    assert result.plan.exporter == "dynamo" and result.plan.static_size is None and result.plan.dynamic_batch
    assert result.info.plugins == {DIST: "0.1.0"}


def test_encoder_pyramid_follows_mobilenetv2_ratios():
    encoder = MobileNetV2Encoder(width=16)
    assert encoder.out_channels == (16, 24, 32, 96, 160)
    assert encoder.strides == (1, 2, 4, 8, 16)
    depthwise = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_inverted_residual_adds_its_input_only_when_shapes_allow():
    block = InvertedResidual(8, 8, stride=1).eval()
    torch.nn.init.zeros_(block.block[-1][1].weight)  # zero the projection's BN scale: the branch outputs 0
    torch.nn.init.zeros_(block.block[-1][1].bias)
    x = torch.rand(1, 8, 10, 10)
    with torch.no_grad():
        assert torch.equal(block(x), x)
        assert InvertedResidual(8, 8, stride=2).eval()(x).shape == (1, 8, 5, 5)
    assert not InvertedResidual(8, 16).residual and not InvertedResidual(8, 8, stride=2).residual
