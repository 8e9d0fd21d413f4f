"""Paired training transforms on torch tensors: image and label map move together.

Geometry is applied to both (labels with nearest neighbour, never blended); color jitter and
blur touch the image only. The transforms run inside DataLoader workers and draw from torch's
random generator, which DataLoader seeds per worker from the loader's generator (`--seed`):
a run repeats exactly for a given `--seed` and `--workers`, and workers never share a stream.

Resize policy (as `instseg.io.images.working_size`): an image is scaled so that its shorter side
is `image_size`, or by the run's fixed `scale` factor (objects keep their size in pixels), times a
random zoom, and an `image_size` square is cropped from it. The crop is taken at the original
resolution first and then resized, so a large image costs no more than a small one.

Intensity (`Augment.microscopy`, `--photometric`): "colour" is brightness / contrast / saturation
jitter and blur; "microscopy" adds, after them, the steps of `photometric` (grey, inversion, stain
shift, gamma, dimming, camera noise) so that a model holds on other microscopes. Its draws come
after all of colour's, so a seed gives the same crop and labels under both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from instseg.data.photometric import PHOTOMETRIC, Microscopy, grey, microscopy_photometric, uniform
from instseg.errors import ConfigError


def resize_image_tensor(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with antialiasing of C x H x W or B x C x H x W images.

    Matches `instseg.io.images.resize_image` (Pillow) to ~1e-5, so training crops see
    pixels scaled as prediction scales them.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(batched, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out if image.dim() == 4 else out[0]


def resize_labels_tensor(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an H x W label map (sampling at pixel centers)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest-exact")
    return out[0, 0].to(labels.dtype)


@dataclass(frozen=True)
class Augment:
    """Augmentation strengths; `TrainTransform(size, augment=None)` keeps only the square crop."""

    zoom: tuple[float, float] = (0.75, 1.33)  # relative to the working size, log-uniform
    rotation: float = 15.0  # maximum small-angle rotation, degrees
    rotation_p: float = 0.5
    brightness: float = 0.2  # multiplicative factor drawn from 1 +- this
    contrast: float = 0.2
    saturation: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # pixels at the training size
    microscopy: Microscopy | None = None  # --photometric microscopy: also grey, inversion, stain, gamma, dim, noise


def training_augment(photometric: str = "colour", zoom: tuple[float, float] | None = None,
                     percentile: bool = False) -> Augment:
    """The run's `Augment`: `zoom` (None: the default range), and for "microscopy" the
    `photometric` steps (`percentile`: the images are read with percentile normalisation)."""
    if photometric not in PHOTOMETRIC:
        raise ConfigError(f"--photometric {photometric!r}: expected one of {', '.join(PHOTOMETRIC)}")
    microscopy = Microscopy(restretch=percentile) if photometric == "microscopy" else None
    return Augment(microscopy=microscopy) if zoom is None else Augment(zoom=tuple(zoom), microscopy=microscopy)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def crop_square(tensor: Tensor, y0: int, x0: int, side: int) -> Tensor:
    """The side x side window at (y0, x0) of the last two dims; zeros (background) outside."""
    h, w = tensor.shape[-2:]
    if y0 >= 0 and x0 >= 0 and y0 + side <= h and x0 + side <= w:
        return tensor[..., y0:y0 + side, x0:x0 + side]
    out = tensor.new_zeros(tensor.shape[:-2] + (side, side))
    ys, xs, ye, xe = max(0, y0), max(0, x0), min(h, y0 + side), min(w, x0 + side)
    if ys < ye and xs < xe:
        out[..., ys - y0:ye - y0, xs - x0:xe - x0] = tensor[..., ys:ye, xs:xe]
    return out


def random_scaled_crop(image: Tensor, labels: Tensor, size: int, zoom: float,
                       generator: torch.Generator | None, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """A random size x size square of the image at its working scale x zoom (the working
    scale: shorter side -> size, or the fixed `scale` factor)."""
    h, w = labels.shape
    factor = (scale if scale is not None else size / min(h, w)) * zoom
    side = max(1, round(size / factor))  # the square in original pixels
    y0 = _randint(min(0, h - side), max(0, h - side), generator)
    x0 = _randint(min(0, w - side), max(0, w - side), generator)
    image = resize_image_tensor(crop_square(image, y0, x0, side), (size, size))
    labels = resize_labels_tensor(crop_square(labels, y0, x0, side), (size, size))
    return image, labels


def random_dihedral(image: Tensor, labels: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One of the 8 flips / 90-degree rotations / transposes of a square, uniformly."""
    k = _randint(0, 3, generator)
    image, labels = torch.rot90(image, k, (1, 2)), torch.rot90(labels, k, (0, 1))
    if uniform(0, 1, generator) < 0.5:
        image, labels = image.transpose(1, 2), labels.transpose(0, 1)
    return image, labels


def rotate(image: Tensor, labels: Tensor, degrees: float) -> tuple[Tensor, Tensor]:
    """Rotate about the center; corners that come from outside are background (zeros)."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, *labels.shape], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    labels = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[0, 0].to(labels.dtype)
    return image, labels


def color_jitter(image: Tensor, aug: Augment, generator: torch.Generator | None) -> Tensor:
    """Brightness, contrast (around the mean grey) and saturation (around the pixel's grey)."""
    image = image * uniform(1 - aug.brightness, 1 + aug.brightness, generator)
    mean = grey(image).mean()
    image = (image - mean) * uniform(1 - aug.contrast, 1 + aug.contrast, generator) + mean
    luma = grey(image)
    image = luma + (image - luma) * uniform(1 - aug.saturation, 1 + aug.saturation, generator)
    return image.clamp(0.0, 1.0)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a C x H x W image (reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out[0]


class TrainTransform:
    """Item at its original size -> `image_size` square, augmented (or only cropped).
    `scale`: a fixed resize factor instead of shorter side -> `image_size`."""

    def __init__(self, image_size: int, augment: Augment | None = Augment(), scale: float | None = None) -> None:
        self.image_size = image_size
        self.augment = augment
        self.scale = scale

    def __call__(self, item: dict, generator: torch.Generator | None = None) -> dict:
        aug = self.augment
        zoom = 1.0
        if aug is not None:
            low, high = math.log(aug.zoom[0]), math.log(aug.zoom[1])
            zoom = math.exp(uniform(low, high, generator))
        image, labels = random_scaled_crop(item["image"], item["labels"], self.image_size, zoom, generator,
                                           self.scale)
        if aug is not None:
            image, labels = random_dihedral(image, labels, generator)
            if uniform(0, 1, generator) < aug.rotation_p:
                image, labels = rotate(image, labels, uniform(-aug.rotation, aug.rotation, generator))
            image = color_jitter(image, aug, generator)
            if uniform(0, 1, generator) < aug.blur_p:
                image = gaussian_blur(image, uniform(*aug.blur_sigma, generator))
            if aug.microscopy is not None:
                image = microscopy_photometric(image, aug.microscopy, generator)
        return {"image": image.clamp(0.0, 1.0).contiguous(), "labels": labels.contiguous(), "name": item["name"]}
