"""Building blocks shared by several architectures (and usable by third-party plugins)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """3x3 (or k x k) convolution, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared MLP over average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # Global pooling written as reductions: exports to ONNX at any input size.
        weights = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * weights.sigmoid()


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7x7 conv over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.conv(pooled).sigmoid()


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


ATTENTION = {"none": None, "cbam": CBAM}


def attention_block(kind: str | None, channels: int) -> nn.Module:
    """An attention module by name ("cbam"), or identity for None/"none"."""
    key = kind or "none"
    if key not in ATTENTION:
        raise ValueError(f"unknown attention '{kind}'; choose from {', '.join(ATTENTION)}")
    factory = ATTENTION[key]
    return nn.Identity() if factory is None else factory(channels)


class DoubleConv(nn.Sequential):
    """Two ConvBNReLU layers, optionally followed by an attention block (UNet's unit)."""

    def __init__(self, in_channels: int, out_channels: int, attention: str | None = None) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels),
            ConvBNReLU(out_channels, out_channels),
            attention_block(attention, out_channels),
        )
