"""SegNet (Badrinarayanan et al. 2017): a VGG16-style encoder-decoder that up-samples with
the encoder's max-pooling indices.

Each decoder stage un-pools with the indices its mirror encoder stage recorded, which puts
activations back where the maxima were (sharp boundaries without skip tensors), then
convolves. The indices tie the decoder to this very encoder, so the encoder is fused: the
spec has no backbone and `--backbone` is refused.
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg import Backbone, Decoder, ExportCaps, ModelSpec, hookimpl
from instseg.models.architectures.blocks import ConvBNReLU
from instseg.models.architectures.vgg import VGG16_BLOCKS

STAGES = len(VGG16_BLOCKS)


def conv_stack(channels: list[int]) -> nn.Sequential:
    return nn.Sequential(*(ConvBNReLU(a, b) for a, b in zip(channels[:-1], channels[1:])))


class SegNet(Decoder):
    """The whole network (it receives the image): 5 conv+pool stages down, 5 unpool+conv stages up."""

    def __init__(self, backbone: Backbone, width: int = 16) -> None:
        super().__init__()
        widths = [width * 2 ** min(i, 3) for i in range(STAGES)]
        previous = [backbone.out_channels[0], *widths[:-1]]
        self.encoder = nn.ModuleList(
            conv_stack([c_in] + [c] * n) for c_in, c, n in zip(previous, widths, VGG16_BLOCKS))
        # Decoder stage i mirrors encoder stage i: n convs, the last one going to the
        # channel count of the level above (width for the top stage).
        self.decoder = nn.ModuleList(
            conv_stack([c] * n + [max(c_prev, width)]) for c, c_prev, n in zip(widths, previous, VGG16_BLOCKS))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.out_channels = width
        self.out_stride = 1

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[0]
        indices = []
        for stage in self.encoder:
            x, index = self.pool(stage(x))
            indices.append(index)
        for stage, index in zip(reversed(self.decoder), reversed(indices)):
            x = stage(self.unpool(x, index))
        return x


@hookimpl
def register_models(register) -> None:
    register(ModelSpec(
        name="segnet",
        decoder=SegNet,
        description="SegNet: VGG16-style encoder, decoder un-pools with the max-pool indices (encoder fused)",
        default_backbone=None,
        multiple_of=2**STAGES,
        export=ExportCaps(exporter="dynamo",
                          notes="MaxUnpool2d exports with dynamo only (ScatterND); the legacy exporter fails"),
    ))
