"""UNet-CBAM: UNet with a CBAM attention block after every double conv.

CBAM (Woo et al. 2018) re-weights channels from average- and max-pooled descriptors
through a shared MLP, then re-weights positions from the channel-wise mean and max through
a 7x7 conv. With the default UNet encoder both paths get CBAM; with another `--backbone`
the decoder keeps it and the backbone is used as it is.
"""

from __future__ import annotations

from instseg import ModelSpec, hookimpl
from instseg.models.architectures.unet import UNetDecoder


@hookimpl
def register_models(register) -> None:
    register(ModelSpec(
        name="unet-cbam",
        decoder=UNetDecoder,
        description="UNet with CBAM (channel + spatial attention) after each double conv; takes any backbone",
        default_backbone="unet-encoder",
        defaults={"attention": "cbam"},
        backbone_defaults={"attention": "cbam"},
    ))
