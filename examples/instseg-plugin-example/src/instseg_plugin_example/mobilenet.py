"""A small MobileNetV2-style encoder (Sandler et al. 2018) as an instseg Backbone.

Inverted residual blocks: a 1x1 convolution expands the channels, a 3x3 depthwise
convolution filters (and strides), a linear 1x1 convolution projects back; a block that
keeps size and channels adds its input. The stages follow MobileNetV2's channel ratios
(16, 24, 32, 96, 160 at width 16) but the stem keeps full resolution, so the decoder gets
a stride-1 skip connection for sharp instance boundaries.
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg import Backbone

# (channels as a multiple of `width`, blocks, stride of the first block); stages that
# start with stride 1 join the previous pyramid level instead of opening a new one.
STAGES = ((1.5, 2, 2), (2, 3, 2), (4, 4, 2), (6, 3, 1), (10, 3, 2))


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """expand (1x1) -> depthwise 3x3 (strided) -> linear project (1x1), plus the input when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: int = 6) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = [conv_bn(in_channels, hidden, 1)] if expand_ratio != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   conv_bn(hidden, out_channels, 1, activation=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2Encoder(Backbone):
    """Stem (3x3 conv + inverted residual, stride 1), then inverted-residual stages to stride 16."""

    def __init__(self, in_channels: int = 3, width: int = 16, expand_ratio: int = 6) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.stem = nn.Sequential(conv_bn(in_channels, width, 3), InvertedResidual(width, width, 1, expand_ratio=1))
        levels: list[list[nn.Module]] = []
        channels, strides = [width], [1]
        current = width
        for multiple, blocks, stride in STAGES:
            out = max(1, round(width * multiple))
            stage = [InvertedResidual(current if i == 0 else out, out, stride if i == 0 else 1, expand_ratio)
                     for i in range(blocks)]
            if stride == 1:  # same resolution: extend the current level
                levels[-1].extend(stage)
                channels[-1] = out
            else:
                levels.append(stage)
                channels.append(out)
                strides.append(strides[-1] * stride)
            current = out
        self.levels = nn.ModuleList(nn.Sequential(*level) for level in levels)
        self.out_channels = tuple(channels)
        self.strides = tuple(strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.stem(x)]
        for level in self.levels:
            features.append(level(features[-1]))
        return features
