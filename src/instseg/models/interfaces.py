"""The contracts every architecture meets: Backbone, Decoder, the three heads, SegOutput.

A model is always `SegmentationModel(backbone, decoder)`: the wrapper owns what must not
differ between architectures - input normalisation, padding to the stride the network
needs, the three heads and cropping back - so training, clustering, metrics and export
treat every registered model alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg import limits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegOutput(NamedTuple):
    """What every model returns.

    semantic:  B x 2 x H x W logits (background, foreground).
    embedding: B x D x H x W pixel embeddings for the discriminative loss.
    count:     B x 1 normalised instance count in [0, 1] (count / max_instances).
    """

    semantic: Tensor
    embedding: Tensor
    count: Tensor


class Backbone(nn.Module):
    """An encoder yielding a feature pyramid, highest resolution first.

    Subclasses set `out_channels` and `strides` (one entry per returned feature map,
    strides relative to the input and ascending) and implement `forward(x) -> list[Tensor]`.
    A backbone factory has the signature `factory(in_channels: int = 3, **kwargs)`.
    """

    out_channels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class Decoder(nn.Module):
    """Turns a backbone's feature pyramid into one feature map for the heads.

    `out_channels` is the channel count of that map and `out_stride` its stride relative
    to the input (1 for UNet-style decoders; DeepLab-style decoders may stop at 4 and let
    the wrapper up-sample the head outputs bilinearly).
    """

    out_channels: int = 0
    out_stride: int = 1

    def forward(self, features: list[Tensor]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class ImageInput(Backbone):
    """The identity backbone for architectures whose encoder is fused to the decoder.

    SegNet needs its own pooling indices, so its "decoder" is the whole network and
    receives the (normalised, padded) image itself.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.out_channels = (in_channels,)
        self.strides = (1,)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x]


class SemanticHead(nn.Module):
    """1x1 convolution to two-class (background, foreground) logits."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class EmbeddingHead(nn.Module):
    """1x1 convolution to D-dimensional pixel embeddings."""

    def __init__(self, in_channels: int, embedding_dim: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, embedding_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class CounterHead(nn.Module):
    """Normalised instance count: two strided convs, global avg+max pooling, linear, sigmoid.

    The strided convs give the descriptor a receptive field larger than one pixel, so it can
    respond to leaf tips and boundaries rather than only to mean color. `pooling="foreground"`
    weights both poolings by the foreground probability: a plant's descriptor then stays the
    same however much background the photo frames around it.
    """

    def __init__(self, in_channels: int, hidden: int = 64, pooling: str = "image") -> None:
        super().__init__()
        if pooling not in limits.COUNTER_POOLING:
            raise ValueError(f"counter_pooling must be one of {', '.join(limits.COUNTER_POOLING)}, got {pooling!r}")
        self.pooling = pooling
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(2 * hidden, 1)

    def forward(self, x: Tensor, foreground: Tensor | None = None) -> Tensor:
        """`foreground`: B x 1 x H x W probabilities, needed by the `foreground` pooling."""
        f = self.features(x)
        if self.pooling == "image":
            mean, peak = f.mean(dim=(2, 3)), f.amax(dim=(2, 3))
        elif foreground is None:
            raise ValueError(f"the {self.pooling} counter needs the foreground probabilities")
        else:
            # sampled at the features' stride (a point sample: the probabilities are smooth)
            w = F.interpolate(foreground, size=f.shape[-2:], mode="bilinear", align_corners=False)
            weighted = f * w  # f >= 0 (ReLU): background positions drop out of the max too
            mean = weighted.sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1e-6)
            peak = weighted.amax(dim=(2, 3))
        return torch.sigmoid(self.fc(torch.cat([mean, peak], dim=1)))


class Normalize(nn.Module):
    """(x - mean) / std with per-channel statistics stored as buffers.

    Living inside the model, the statistics travel with checkpoints and ONNX graphs, so
    prediction normalises exactly as training did.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int, int]:
    """Replicate-pad H and W up to a multiple; returns the padded tensor and original H, W."""
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, h, w


class SegmentationModel(nn.Module):
    """normalise -> pad -> backbone -> decoder -> heads -> (up-sample) -> crop.

    `multiple_of` is the size H and W are padded to internally (the largest stride the
    network divides by); any input size is accepted.
    """

    def __init__(
        self,
        backbone: Backbone,
        decoder: Decoder,
        *,
        embedding_dim: int = 32,
        max_instances: int = 20,
        multiple_of: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        position_scale: float = 0.0,
        counter_pooling: str = "image",
    ) -> None:
        super().__init__()
        if not (math.isfinite(position_scale) and position_scale >= 0):
            raise ValueError(f"position_scale must be 0 (off) or a positive number of pixels, got {position_scale}")
        if position_scale and embedding_dim < 2:
            raise ValueError(f"position_scale needs embedding_dim >= 2, got {embedding_dim}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.decoder = decoder
        self.semantic_head = SemanticHead(decoder.out_channels)
        self.embedding_head = EmbeddingHead(decoder.out_channels, embedding_dim)
        self.counter_head = CounterHead(decoder.out_channels, pooling=counter_pooling)
        self.embedding_dim = embedding_dim
        self.max_instances = max_instances
        self.multiple_of = max(1, int(multiple_of))
        self.position_scale = float(position_scale)

    @property
    def counter_pooling(self) -> str:
        """What the counter head pools over (limits.COUNTER_POOLING)."""
        return self.counter_head.pooling

    def forward(self, x: Tensor) -> SegOutput:
        x, h, w = pad_to_multiple(self.normalize(x), self.multiple_of)
        features = self.decoder(self.backbone(x))
        semantic = self.semantic_head(features)
        embedding = self.embedding_head(features)
        # the counter's weights come from the semantic head without steering it (detached)
        foreground = torch.softmax(semantic.detach(), dim=1)[:, 1:] if self.counter_pooling == "foreground" else None
        count = self.counter_head(features, foreground)
        if self.decoder.out_stride != 1:
            size = (x.shape[-2], x.shape[-1])
            semantic = F.interpolate(semantic, size=size, mode="bilinear", align_corners=False)
            embedding = F.interpolate(embedding, size=size, mode="bilinear", align_corners=False)
        embedding = embedding[..., :h, :w]
        if self.position_scale:
            embedding = add_positions(embedding, self.position_scale)
        return SegOutput(semantic[..., :h, :w], embedding, count)


def add_positions(embedding: Tensor, scale: float) -> Tensor:
    """Semi-convolutional embeddings (Novotny et al. 2018): each pixel's (row, column) / `scale`
    added to the first two channels, in float32 whatever the autocast precision.

    The head then learns offsets towards its object's centre: two look-alike objects at
    different places (leaves of one rosette) get different embeddings without the network
    having to tell them apart by context."""
    h, w = embedding.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32, device=embedding.device) / scale
    cols = torch.arange(w, dtype=torch.float32, device=embedding.device) / scale
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).unsqueeze(0)
    embedding = embedding.float()
    return torch.cat([embedding[:, :2] + grid, embedding[:, 2:]], dim=1)
