"""ResNet-34 encoder backbone (He et al. 2016) with an adjustable output stride.

Basic blocks (two 3x3 convs and an identity or 1x1 projection shortcut), 3-4-6-3 blocks per
stage. `output_stride` 32 is the classification network; 16 or 8 replace the stride of the
last one or two stages by dilation (DeepLab), so the deepest map keeps more resolution at
the same receptive field. Features: stem (stride 2) and the four stages.

Module names follow the common ResNet state-dict layout (conv1, bn1, layer1.0.conv1, ...,
downsample.0/1), so with `width=64` a locally saved ImageNet ResNet-34 state dict loads with
`--weights` (its `fc.*` keys are reported as unexpected and ignored).
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg import Backbone, ConfigError, hookimpl

RESNET34_LAYERS = (3, 4, 6, 3)
OUTPUT_STRIDES = (8, 16, 32)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut projects when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet_stage(in_channels: int, out_channels: int, blocks: int, stride: int, dilation: int,
                 previous_dilation: int) -> nn.Sequential:
    """One stage; a dilated stage keeps the previous dilation in its first conv (no gridding jump)."""
    layers = [BasicBlock(in_channels, out_channels, stride, dilation, first_dilation=previous_dilation)]
    layers += [BasicBlock(out_channels, out_channels, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet34Encoder(Backbone):
    """ResNet-34: 7x7 stem, max-pool, four stages of basic blocks; strides 2-32 (or dilated to 16/8)."""

    def __init__(self, in_channels: int = 3, width: int = 16, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"resnet34: output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = [width * 2**i for i in range(len(RESNET34_LAYERS))]
        strides, stride, dilation = [2, 4], 4, 1
        previous = width
        for i, (blocks, out) in enumerate(zip(RESNET34_LAYERS, channels)):
            step, previous_dilation = (1 if i == 0 else 2), dilation
            if stride * step > output_stride:
                dilation, step = dilation * step, 1
            stride *= step
            self.add_module(f"layer{i + 1}", resnet_stage(previous, out, blocks, step, dilation, previous_dilation))
            previous = out
            if i > 0:
                strides.append(stride)
        self.out_channels = (width, *channels)
        self.strides = tuple(strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [stem, c1, c2, c3, self.layer4(c3)]


@hookimpl
def register_backbones(register) -> None:
    register("resnet34", ResNet34Encoder,
             "ResNet-34 basic blocks (3-4-6-3); strides 2-32, output_stride=16|8 dilates the last stages "
             "(width=16 -> 16..128 ch, 64 = original)")
