"""DeepLabV3 (Chen et al. 2017) on a dilated ResNet-34, with a low-level skip by default.

ASPP looks at the deepest map through parallel 1x1 and dilated 3x3 convs (rates 6/12/18)
and an image-pooling branch; the heads are up-sampled bilinearly to the input size.

Why the reference DeepLabV3 segmented leaves badly: it ran at output stride 16 with no skip
and up-sampled the heads 16x. At 256 px the embedding map was 16 x 16: one embedding per
16 x 16 pixels, while a small leaf covers ~20 px and leaves touch along thin boundaries, so
neighbouring leaves shared embeddings and bilinear up-sampling smeared them into one.
The skip is the cure: the ASPP output is up-sampled to the stride-4 features and fused with
them (as in DeepLabV3+), and the heads are up-sampled 4x. Trained side by side on synthetic
leaves (bench/models.py --deeplab-variants), the skip gained far more SBD than output
stride 8 did, and output stride 8 with the skip was no better than 16 with it at about
twice the cost; so the default is output stride 16 (last stage dilated) with the skip, and
`skip_stride=None` gives the reference configuration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg import Backbone, ConfigError, Decoder, ModelSpec, hookimpl
from instseg.models.architectures.blocks import ConvBNReLU

ASPP_RATES = (6, 12, 18)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3s and image pooling, concatenated, projected."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...] = ASPP_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)] + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates])
        # No batch norm on the pooled branch: it has one value per channel and image.
        self.image_pool = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
        self.project = ConvBNReLU((len(rates) + 2) * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # Global pooling as a mean (exports at any size), broadcast back with expand.
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabV3Decoder(Decoder):
    """ASPP on the deepest map, optionally fused with the backbone's features at `skip_stride`."""

    def __init__(self, backbone: Backbone, rates: tuple[int, ...] = ASPP_RATES, skip_stride: int | None = 4,
                 channels: int | None = None) -> None:
        super().__init__()
        in_channels, strides = backbone.out_channels, backbone.strides
        channels = channels or max(in_channels[-1] // 2, 8)
        self.aspp = ASPP(in_channels[-1], channels, tuple(rates))
        self.skip_index = None
        if skip_stride:
            if skip_stride not in strides[:-1]:
                raise ConfigError(f"deeplabv3: skip_stride={skip_stride} is not a stride of the backbone's "
                                  f"shallower features {strides[:-1]}")
            self.skip_index = strides.index(skip_stride)
            skip_channels = max(channels * 3 // 16, 4)  # 48 for 256 ASPP channels, as in DeepLabV3+
            self.reduce = ConvBNReLU(in_channels[self.skip_index], skip_channels, 1)
            self.fuse = nn.Sequential(ConvBNReLU(channels + skip_channels, channels), ConvBNReLU(channels, channels))
            self.out_stride = skip_stride
        else:
            self.fuse = ConvBNReLU(channels, channels)
            self.out_stride = strides[-1]
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.aspp(features[-1])
        if self.skip_index is None:
            return self.fuse(x)
        skip = self.reduce(features[self.skip_index])
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], dim=1))


@hookimpl
def register_models(register) -> None:
    register(ModelSpec(
        name="deeplabv3",
        decoder=DeepLabV3Decoder,
        description="DeepLabV3: dilated ResNet-34 (output stride 16), ASPP 6/12/18 + image pooling, "
                    "stride-4 skip, bilinear up-sampling; takes any backbone",
        default_backbone="resnet34",
        backbone_defaults={"output_stride": 16},
    ))
