"""The hook implementations instseg finds through the `instseg` entry point."""

from __future__ import annotations

from instseg import ExportCaps, ModelSpec, hookimpl
from instseg.models.architectures.unet import UNetDecoder

from instseg_plugin_example.mobilenet import MobileNetV2Encoder


@hookimpl
def register_backbones(register) -> None:
    register("mobilenetv2-lite", MobileNetV2Encoder,
             "MobileNetV2-style inverted residuals; strides 1-16 (width=16 -> 16..160 ch)")


@hookimpl
def register_models(register) -> None:
    register(ModelSpec(
        name="mobile-unet",
        decoder=UNetDecoder,
        description="instseg's UNet decoder on the MobileNetV2-style encoder",
        default_backbone="mobilenetv2-lite",
        # Only standard convolutions, batch norm, ReLU6 and bilinear up-sampling: the dynamo
        # exporter handles them with batch, H and W all dynamic.
        export=ExportCaps(dynamic_hw=True, dynamic_batch=True, exporter="dynamo"),
    ))
