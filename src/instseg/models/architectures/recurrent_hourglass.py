"""Stacked recurrent hourglass (after Payer et al. 2018, "Instance segmentation and tracking
with cosine embeddings and recurrent hourglass networks").

A stem brings the image to stride 4. Hourglasses follow one another; in each, the skip at
every level is a convolutional GRU whose hidden state is that level's skip from the previous
hourglass, so the stack refines its skips recurrently (Payer et al. recur over video frames;
on single images the recurrence runs over the stack). ReNet layers then give the result a
whole-image view, and transposed convs with the stem's skips climb to full resolution.

The reference implementation never trained past 2 epochs because back-propagation failed.
Here the hidden states are made on every forward from the input (its size, dtype, device),
updated out of place and dropped at the end: no state lives between batches.
"""

from __future__ import annotations

from math import lcm

import torch.nn.functional as F
from torch import Tensor, nn

from instseg import Backbone, Decoder, ModelSpec, hookimpl
from instseg.models.architectures.blocks import ConvBNReLU, ConvGRUCell, ReNet
from instseg.models.architectures.reseg import RENET_EXPORT, RENET_MULTIPLE
from instseg.models.architectures.unet import UpBlock

HOURGLASS_DEPTH = 3  # down-samplings inside each hourglass (strides 4 -> 32)
STEM_STRIDE = 4


class RecurrentHourglass(nn.Module):
    """One hourglass: max-pool + conv down, nearest up-sampling + GRU skip + conv up."""

    def __init__(self, channels: int, depth: int = HOURGLASS_DEPTH) -> None:
        super().__init__()
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), ConvBNReLU(channels, channels)) for _ in range(depth))
        self.skips = nn.ModuleList(ConvGRUCell(channels, channels) for _ in range(depth))
        self.ups = nn.ModuleList(ConvBNReLU(channels, channels) for _ in range(depth))

    def forward(self, x: Tensor, states: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """Returns the output and the new skip states (zeros stand in for `states` when None)."""
        levels = [x]
        for down in self.downs:
            levels.append(down(levels[-1]))
        if states is None:
            states = [cell.initial_state(level) for cell, level in zip(self.skips, levels)]
        states = [cell(level, h) for cell, level, h in zip(self.skips, levels, states)]
        y = levels[-1]
        for up, skip in zip(reversed(self.ups), reversed(states)):
            y = up(F.interpolate(y, scale_factor=2.0, mode="nearest") + skip)
        return y, states


class StackedRecurrentHourglass(Decoder):
    """The whole network (it receives the image): stem, hourglass stack, ReNet, up-sampling."""

    def __init__(self, backbone: Backbone, width: int = 16, stacks: int = 2, renet_layers: int = 1) -> None:
        super().__init__()
        c1, c2, c4 = width, 2 * width, 4 * width
        self.stem = nn.ModuleList([
            nn.Sequential(ConvBNReLU(backbone.out_channels[0], c1), ConvBNReLU(c1, c1)),
            ConvBNReLU(c1, c2, stride=2),
            ConvBNReLU(c2, c4, stride=2),
        ])
        self.hourglasses = nn.ModuleList(RecurrentHourglass(c4) for _ in range(stacks))
        self.renet = nn.Sequential(*(ReNet(c4, c4 // 2) for _ in range(renet_layers)))
        self.up = nn.ModuleList([UpBlock(c4, c2, c2, 2, "transposed"), UpBlock(c2, c1, c1, 2, "transposed")])
        self.out_channels = c1
        self.out_stride = 1

    def forward(self, features: list[Tensor]) -> Tensor:
        s1 = self.stem[0](features[0])
        s2 = self.stem[1](s1)
        x = self.stem[2](s2)
        states = None
        for hourglass in self.hourglasses:
            y, states = hourglass(x, states)
            x = x + y  # residual between hourglasses
        x = self.renet(x)
        for block, skip in zip(self.up, (s2, s1)):
            x = block(x, skip)
        return x


@hookimpl
def register_models(register) -> None:
    register(ModelSpec(
        name="stacked-recurrent-hourglass",
        aliases=("srhg",),
        decoder=StackedRecurrentHourglass,
        description="Stacked hourglasses with ConvGRU skips recurring over the stack, ReNet, "
                    "transposed-conv up-sampling (encoder fused)",
        default_backbone=None,
        multiple_of=lcm(STEM_STRIDE * 2**HOURGLASS_DEPTH, RENET_MULTIPLE),
        export=RENET_EXPORT,
    ))
