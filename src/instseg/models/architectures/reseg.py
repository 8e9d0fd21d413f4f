"""ReSeg (Visin et al. 2016) and ReSeg with CoordConv.

Default encoder: VGG16 up to conv3_3 (stride 4; its conv1_2 and conv2_2 maps are the skips at
strides 1 and 2). Two ReNet layers - bidirectional GRUs over every row, then every column -
give each pixel of the deepest map a view of the whole image; transposed convs then climb
back to full resolution, fusing the skips (UNet's up blocks).

`coord_conv=True` (the `reseg-coord` model) appends x, y and radius channels (Liu et al.
2018) to the first ReNet's input and to every skip before its convolutions, so embeddings
can tell apart leaves that look alike but sit in different places.
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg import Backbone, Decoder, ExportCaps, ModelSpec, hookimpl
from instseg.models.architectures.blocks import COORD_CHANNELS, ReNet, add_coordinates
from instseg.models.architectures.unet import UpBlock

# ReNet reshapes name their channel sizes, and the model pads to 16 so that H, W can be
# declared as multiples of 16. Both exporters then give a dynamic graph with ONNX GRU ops, but
# dynamo reaches it through a while-loop GRU decomposition that takes ~30 s per export and
# fails on a second export in the same process (torch 2.13); the legacy exporter writes the
# same graph in under a second, so it is the one that works here (exporters/onnx.py).
RENET_MULTIPLE = 16
RENET_EXPORT = ExportCaps(
    dynamic_hw=True, exporter="legacy",
    notes="ReNet GRUs: legacy exporter (dynamo is ~30x slower on GRUs and fails on a second export in a "
          "process); dynamic batch, H and W")


class ReSegDecoder(Decoder):
    """ReNet layers on the deepest map, then transposed-conv up blocks with the skips."""

    def __init__(self, backbone: Backbone, renet_layers: int = 2, hidden: int | None = None,
                 coord_conv: bool = False) -> None:
        super().__init__()
        channels, strides = backbone.out_channels, backbone.strides
        extra = COORD_CHANNELS if coord_conv else 0
        hidden = hidden or max(channels[-1] // 2, 1)
        layers = []
        current = channels[-1] + extra
        for _ in range(renet_layers):
            layers.append(ReNet(current, hidden))
            current = 2 * hidden
        self.renet = nn.Sequential(*layers)
        self.coord_conv = coord_conv
        blocks = []
        for i in reversed(range(len(channels) - 1)):
            blocks.append(UpBlock(current, channels[i] + extra, channels[i], strides[i + 1] // strides[i], "transposed"))
            current = channels[i]
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = current
        self.out_stride = strides[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        x = self.renet(add_coordinates(x) if self.coord_conv else x)
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, add_coordinates(skip) if self.coord_conv else skip)
        return x


@hookimpl
def register_models(register) -> None:
    for name, coord, what in (("reseg", False, ""), ("reseg-coord", True, " + CoordConv (x, y, r)")):
        register(ModelSpec(
            name=name,
            decoder=ReSegDecoder,
            description=f"ReSeg{what}: VGG16 to conv3_3, 2 ReNet (bi-GRU rows, columns), "
                        "2 transposed-conv up stages with skips; takes any backbone",
            default_backbone="vgg16",
            backbone_defaults={"depth": 3},
            defaults={"coord_conv": coord},
            multiple_of=RENET_MULTIPLE,
            export=RENET_EXPORT,
        ))
