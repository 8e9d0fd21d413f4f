"""VGG16 encoder backbone (Simonyan & Zisserman 2015), with batch norm by default.

Five blocks of 3x3 convs (2, 2, 3, 3, 3 convs) separated by 2x2 max-pools; the feature map
at the end of each block is returned (conv1_2 ... conv5_3, strides 1 to 16). `depth` keeps
the first blocks only: ReSeg uses VGG16 up to conv3_3 (depth 3, stride 4).

The layers sit in one `features` sequence laid out like the common VGG16(-BN) state dicts,
so with `width=64` a locally saved ImageNet `features.*` state dict loads with `--weights`
(its classifier keys are reported as unexpected and ignored).
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg import Backbone, ConfigError, hookimpl

VGG16_BLOCKS = (2, 2, 3, 3, 3)


def vgg_layers(in_channels: int, width: int, depth: int, batch_norm: bool) -> tuple[list[nn.Module], list[int]]:
    """The VGG16 layer list and the index of the last layer of each block."""
    layers: list[nn.Module] = []
    taps = []
    channels = in_channels
    for block, convs in enumerate(VGG16_BLOCKS[:depth]):
        out = width * 2 ** min(block, 3)
        if block > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(convs):
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        taps.append(len(layers) - 1)
    return layers, taps


class VGG16Encoder(Backbone):
    """VGG16(-BN) conv blocks; features at the end of each block (strides 1, 2, 4, 8, 16)."""

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 5, batch_norm: bool = True) -> None:
        super().__init__()
        if not 1 <= depth <= len(VGG16_BLOCKS):
            raise ConfigError(f"vgg16: depth must be 1-{len(VGG16_BLOCKS)}, got {depth}")
        layers, taps = vgg_layers(in_channels, width, depth, batch_norm)
        self.features = nn.Sequential(*layers)
        self.taps = frozenset(taps)
        self.out_channels = tuple(width * 2 ** min(b, 3) for b in range(depth))
        self.strides = tuple(2**b for b in range(depth))

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


@hookimpl
def register_backbones(register) -> None:
    register("vgg16", VGG16Encoder,
             "VGG16-BN conv blocks (2-2-3-3-3 convs); strides 1-16 (width=16 -> 16..128 ch, 64 = original)")
