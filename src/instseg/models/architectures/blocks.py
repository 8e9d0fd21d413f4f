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


# -- CoordConv (Liu et al. 2018), used by ReSeg ---------------------------------------

COORD_CHANNELS = 3


def coordinate_channels(x: Tensor) -> Tensor:
    """B x 3 x H x W maps of x and y in [-1, 1] and the radius r = sqrt(x^2 + y^2) / sqrt(2).

    Built from a cumulative sum over a ones tensor shaped like `x`, so the maps follow the
    input's size, dtype and device and export to ONNX with dynamic H and W.
    """
    base = torch.ones_like(x[:, :1])
    ys = base.cumsum(dim=2) - 1
    xs = base.cumsum(dim=3) - 1
    ys = ys / ys.amax(dim=2, keepdim=True).clamp_min(1) * 2 - 1
    xs = xs / xs.amax(dim=3, keepdim=True).clamp_min(1) * 2 - 1
    radius = (xs * xs + ys * ys).sqrt() * (2**-0.5)
    return torch.cat([xs, ys, radius], dim=1)


def add_coordinates(x: Tensor) -> Tensor:
    """CoordConv's input: `x` with the x, y and r channels appended."""
    return torch.cat([x, coordinate_channels(x)], dim=1)


# -- recurrent layers: ReNet (ReSeg, hourglass) and ConvGRU (hourglass skips) ----------

class ReNet(nn.Module):
    """One ReNet layer (Visin et al. 2015): a bidirectional GRU sweeps every row, then one every column.

    Each output pixel sees its whole row, then (through the row summaries) the whole image.
    Reshapes name the channel size explicitly: with `-1` there, a dynamo ONNX export only
    runs at the export shape.
    """

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = 2 * hidden
        self.horizontal = nn.GRU(in_channels, hidden, batch_first=True, bidirectional=True)
        self.vertical = nn.GRU(2 * hidden, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h, w, self.in_channels)
        rows, _ = self.horizontal(rows)
        cols = rows.reshape(n, h, w, self.out_channels).permute(0, 2, 1, 3).reshape(n * w, h, self.out_channels)
        cols, _ = self.vertical(cols)
        return cols.reshape(n, w, h, self.out_channels).permute(0, 3, 2, 1)


class ConvGRUCell(nn.Module):
    """A convolutional GRU cell: h' = (1 - z) * n + z * h, gates from 3x3 convs over [x, h].

    Stateless: the caller passes the hidden state in and gets the new one back, and
    `initial_state` makes zeros shaped like the input on every forward, so nothing is
    carried between batches and nothing is modified in place.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        padding = kernel_size // 2
        self.gates = nn.Conv2d(in_channels + hidden, 2 * hidden, kernel_size, padding=padding)
        self.candidate = nn.Conv2d(in_channels + hidden, hidden, kernel_size, padding=padding)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros((x.shape[0], self.hidden, x.shape[2], x.shape[3]))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        update, reset = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * candidate + update * h
