"""An example instseg plugin: a MobileNetV2-style backbone and a UNet on top of it.

Installed, it adds the backbone `mobilenetv2-lite` (usable under any instseg decoder that
takes a backbone, e.g. `instseg train --model unet-cbam --backbone mobilenetv2-lite`) and
the model `mobile-unet` (instseg's UNet decoder on that backbone).
"""

from instseg_plugin_example.mobilenet import InvertedResidual, MobileNetV2Encoder

__all__ = ["InvertedResidual", "MobileNetV2Encoder"]
