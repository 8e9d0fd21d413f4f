"""UNet (Ronneberger et al. 2015): the UNet encoder backbone and the UNet decoder.

The decoder takes any registered backbone: it walks the feature pyramid from the deepest
map up, up-sampling (bilinear, or a transposed conv where the stride doubles) and fusing
each skip with a double conv. Its output has the resolution of the backbone's first
feature map; the model wrapper up-samples the heads if that is not the input's.
`coord_conv=True` feeds x, y and radius guide channels (CoordConv, Liu et al. 2018) into every
decoder level, not only the output, so that each level can tell apart identical-looking objects
by where they are (the guides of Kulikov & Lempitsky's harmonic embeddings and of GMT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg import Backbone, Decoder, ModelSpec, hookimpl
from instseg.models.architectures.blocks import COORD_CHANNELS, DoubleConv, add_coordinates

UP_MODES = ("bilinear", "transposed")


class UNetEncoder(Backbone):
    """UNet contracting path: a double conv per level, 2x2 max-pool between levels."""

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 4, attention: str | None = None) -> None:
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, channels[0], attention)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(channels[i], channels[i + 1], attention)) for i in range(depth))
        self.out_channels = tuple(channels)
        self.strides = tuple(2**i for i in range(depth + 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class UpBlock(nn.Module):
    """Up-sample to the skip's size, concatenate the skip (and the guides), double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: int,
                 up: str = "bilinear", attention: str | None = None, coord_conv: bool = False) -> None:
        super().__init__()
        if up not in UP_MODES:
            raise ValueError(f"unknown up-sampling '{up}'; choose from {', '.join(UP_MODES)}")
        self.transposed = up == "transposed" and scale == 2
        if self.transposed:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            in_channels //= 2
        self.coord_conv = coord_conv
        guides = COORD_CHANNELS if coord_conv else 0
        self.conv = DoubleConv(in_channels + skip_channels + guides, out_channels, attention)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if self.transposed:
            x = self.up(x)
        elif x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, skip], dim=1)
        return self.conv(add_coordinates(x) if self.coord_conv else x)


class UNetDecoder(Decoder):
    """UNet expanding path over any backbone's feature pyramid."""

    def __init__(self, backbone: Backbone, up: str = "bilinear", attention: str | None = None,
                 coord_conv: bool = False) -> None:
        super().__init__()
        channels, strides = backbone.out_channels, backbone.strides
        blocks = []
        current = channels[-1]
        for i in reversed(range(len(channels) - 1)):
            blocks.append(UpBlock(current, channels[i], channels[i], strides[i + 1] // strides[i], up, attention,
                                  coord_conv))
            current = channels[i]
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels[0]
        self.out_stride = strides[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
        return x


@hookimpl
def register_backbones(register) -> None:
    register("unet-encoder", UNetEncoder,
             "UNet contracting path: double conv per level, max-pool; strides 1-16 (width=16 -> 16..256 ch)")


@hookimpl
def register_models(register) -> None:
    register(ModelSpec(
        name="unet",
        decoder=UNetDecoder,
        description="UNet, 4 down / 4 up with skips; up='bilinear'|'transposed', coord_conv=true for guide "
                    "channels at every decoder level; takes any backbone",
        default_backbone="unet-encoder",
    ))
