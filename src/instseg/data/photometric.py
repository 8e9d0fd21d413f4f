"""Intensity augmentation for microscopy (`--photometric microscopy`), image only, never labels.

A nuclei model trained on DSB2018 meets images from other microscopes: dim, noisy fluorescence
came out as ragged masks and specks, and colour histology (dark purple nuclei on a light
background, where fluorescence has bright nuclei on black) failed almost completely. Each step
below imitates one of those differences; each is drawn per image with torch's generator (so a
seeded run repeats), with a moderate probability, in acquisition order, on the C x H x W float
image in [0, 1]; every output is clamped to [0, 1]:

    grey        (p 0.2) the luma replicated to the channels: colour is not what marks a nucleus,
                so a stained image must also be read as a grey one.
    inversion   (p 0.2) 1 - image: bright-on-dark fluorescence becomes dark-on-light as in
                brightfield and histology, so both polarities of nuclei occur in training.
    stain shift (p 0.3) per-channel gain around the channel's mean and per-channel offset: purple
                on pink, other stains and tinted grey look alike to the model. A grey image is
                tinted too when this is drawn (that is how an inverted grey image turns into a
                two-tone stain); the other steps keep a grey image grey.
    gamma       (p 0.3) intensity ** g, g log-uniform in 0.5-2: another camera response or
                display curve, mid-tones brighter or darker.
    dimming     (p 0.3) the image times a factor log-uniform in 0.05-1: a short exposure or weak
                stain (held-out fluorescence had mean intensity ~10 of 255). With fixed
                normalisation the network sees the dim image as inference will; with percentile
                normalisation (`restretch`) a dimmed image goes back through the 1st / 99.8th
                percentile stretch, as inference would read it: what remains is its noise.
    camera noise (p 0.4) Gaussian with variance shot^2 * intensity + read^2 (Poisson-like photon
                noise plus read noise; shot log-uniform in 0.01-0.15, read uniform up to 0.05):
                the specks and ragged borders of noisy acquisitions. One field for all the
                channels of a grey image, so it stays grey; independent per channel otherwise.

About 13% of the images pass through unchanged by all six. The generic helpers (`uniform`,
`grey`) are shared with `transforms`, whose colour jitter and blur run before these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from instseg.io.microscopy import PERCENTILES
from instseg.train.config import PHOTOMETRIC  # noqa: F401 - the names --photometric takes, defined torch-free there

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma
PERCENTILE_SAMPLE = 16384  # pixels per channel that percentile_stretch sorts, about


@dataclass(frozen=True)
class Microscopy:
    """Probabilities and ranges of the microscopy steps (see the module docstring)."""

    grey_p: float = 0.2
    invert_p: float = 0.2
    stain_p: float = 0.3
    stain_gain: tuple[float, float] = (0.5, 1.5)  # per channel, uniform, around the channel mean
    stain_offset: float = 0.15  # per channel, uniform in +- this
    gamma_p: float = 0.3
    gamma: tuple[float, float] = (0.5, 2.0)  # log-uniform
    dim_p: float = 0.3
    dim: tuple[float, float] = (0.05, 1.0)  # log-uniform
    noise_p: float = 0.4
    shot: tuple[float, float] = (0.01, 0.15)  # noise std per sqrt(intensity), log-uniform
    read: float = 0.05  # the largest read-noise std, uniform from 0
    restretch: bool = False  # percentile reading: a dimmed image is percentile-normalised again


def uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def log_uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return math.exp(uniform(math.log(low), math.log(high), generator))


def chance(p: float, generator: torch.Generator | None) -> bool:
    """True with probability p (one draw, also when p is 0 or 1, so the stream stays aligned)."""
    return uniform(0.0, 1.0, generator) < p


def grey(image: Tensor) -> Tensor:
    """1 x H x W luma of a 3 x H x W RGB image."""
    weights = torch.tensor(GREY_WEIGHTS, dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(dim=0, keepdim=True)


def is_grey(image: Tensor) -> bool:
    """One channel, or all channels equal (a grey file is read replicated to three)."""
    return image.shape[0] == 1 or bool((image == image[:1]).all())


def to_grey(image: Tensor) -> Tensor:
    """The luma replicated to the image's channels (a one-channel image is grey already)."""
    return image if image.shape[0] == 1 else grey(image).expand_as(image).contiguous()


def invert(image: Tensor) -> Tensor:
    return 1.0 - image


def stain_shift(image: Tensor, gains: Tensor, offsets: Tensor) -> Tensor:
    """Per channel c: mean_c + (x - mean_c) * gains[c] + offsets[c], clamped: a contrast and a
    tint per channel, so the hue of nuclei and background both move."""
    mean = image.mean(dim=(1, 2), keepdim=True)
    out = mean + (image - mean) * gains.view(-1, 1, 1) + offsets.view(-1, 1, 1)
    return out.clamp(0.0, 1.0)


def random_stain(image: Tensor, aug: Microscopy, generator: torch.Generator | None) -> Tensor:
    channels = image.shape[0]
    low, high = aug.stain_gain
    gains = low + (high - low) * torch.rand(channels, generator=generator, dtype=image.dtype)
    offsets = aug.stain_offset * (2 * torch.rand(channels, generator=generator, dtype=image.dtype) - 1)
    return stain_shift(image, gains, offsets)


def apply_gamma(image: Tensor, gamma: float) -> Tensor:
    return image.clamp(0.0, 1.0).pow(gamma)


def camera_noise(image: Tensor, shot: float, read: float, generator: torch.Generator | None) -> Tensor:
    """Gaussian noise of std sqrt(shot^2 * x + read^2) at intensity x, clamped: photon noise that
    grows with the signal, plus read noise everywhere. A grey image gets one field for all channels."""
    std = (shot**2 * image.clamp(0.0, 1.0) + read**2).sqrt()
    shape = (1, *image.shape[1:]) if is_grey(image) else image.shape
    field = torch.randn(shape, generator=generator, dtype=image.dtype)
    return (image + std * field).clamp(0.0, 1.0)


def percentile_stretch(image: Tensor) -> Tensor:
    """Each channel's 1st / 99.8th percentiles to 0 / 1, clipped; a flat channel is 0 (as
    `io.microscopy.percentile_scaled` reads a file). Percentiles of an evenly strided sample of
    at most ~2 * `PERCENTILE_SAMPLE` pixels: sorting a whole 256 px crop would double the cost
    of augmenting it, and the reader's percentiles were of the whole image, not this crop, anyway."""
    flat = image.flatten(1)
    flat = flat[:, ::max(1, flat.shape[1] // PERCENTILE_SAMPLE)]
    q = torch.tensor([p / 100 for p in PERCENTILES], dtype=image.dtype)
    low, high = torch.quantile(flat, q, dim=1).view(2, -1, 1, 1)
    span = high - low
    scale = torch.where(span > 0, 1.0 / span.clamp_min(1e-12), torch.zeros_like(span))
    return ((image - low) * scale).clamp(0.0, 1.0)


def acquisition(image: Tensor, aug: Microscopy, generator: torch.Generator | None) -> Tensor:
    """Dimming then camera noise, then (percentile reading, dimmed) the stretch inference applies."""
    dimmed = chance(aug.dim_p, generator)
    if dimmed:
        image = image * log_uniform(*aug.dim, generator)
    if chance(aug.noise_p, generator):
        image = camera_noise(image, log_uniform(*aug.shot, generator), uniform(0.0, aug.read, generator), generator)
    return percentile_stretch(image) if dimmed and aug.restretch else image


def microscopy_photometric(image: Tensor, aug: Microscopy, generator: torch.Generator | None) -> Tensor:
    """All the steps of the module docstring, each drawn per image, in acquisition order."""
    if chance(aug.grey_p, generator):
        image = to_grey(image)
    if chance(aug.invert_p, generator):
        image = invert(image)
    if chance(aug.stain_p, generator):
        image = random_stain(image, aug, generator)
    if chance(aug.gamma_p, generator):
        image = apply_gamma(image, log_uniform(*aug.gamma, generator))
    return acquisition(image, aug, generator).clamp(0.0, 1.0)
