"""Microscopy intensity augmentation: each step on hand-checkable images, the pipeline's draws,
and "colour" exactly as before."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from data_fixtures import nuclei_folder
from instseg.data import build_datasets
from instseg.data.photometric import (
    PHOTOMETRIC,
    Microscopy,
    apply_gamma,
    camera_noise,
    invert,
    is_grey,
    microscopy_photometric,
    percentile_stretch,
    random_stain,
    stain_shift,
    to_grey,
)
from instseg.data.transforms import (
    Augment,
    TrainTransform,
    color_jitter,
    gaussian_blur,
    random_dihedral,
    random_scaled_crop,
    rotate,
    training_augment,
)
from instseg.errors import ConfigError
from instseg.io.microscopy import Reading, percentile_scaled
from instseg.train import config

EVERY_STEP = Microscopy(grey_p=1.0, invert_p=1.0, stain_p=1.0, gamma_p=1.0, dim_p=1.0, noise_p=1.0)
NO_STEP = Microscopy(grey_p=0.0, invert_p=0.0, stain_p=0.0, gamma_p=0.0, dim_p=0.0, noise_p=0.0)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(channels: int, size: int = 32) -> torch.Tensor:
    """Intensities 0..1 along the columns, a different slope per channel."""
    x = torch.linspace(0, 1, size).expand(size, size)
    return torch.stack([x ** (c + 1) for c in range(channels)])


def constant(value: float, channels: int = 3, size: int = 64) -> torch.Tensor:
    return torch.full((channels, size, size), value)


def item(size=(48, 40)) -> dict:
    labels = torch.zeros(size, dtype=torch.long)
    labels[5:20, 6:18], labels[24:40, 20:36] = 1, 2
    image = torch.stack([0.2 + 0.6 * (labels > 0), 0.1 + 0.3 * (labels == 1), torch.full(size, 0.5)]).float()
    return {"image": image, "labels": labels, "name": "two"}


def test_the_names_agree_with_the_torch_free_config():
    assert PHOTOMETRIC == config.PHOTOMETRIC


@pytest.mark.parametrize("channels", [1, 3])
def test_gamma_of_a_constant_image(channels):
    torch.testing.assert_close(apply_gamma(constant(0.25, channels), 0.5), constant(0.5, channels))
    torch.testing.assert_close(apply_gamma(constant(0.25, channels), 2.0), constant(0.0625, channels))


@pytest.mark.parametrize("channels", [1, 3])
def test_inversion_swaps_dark_and_light(channels):
    image = ramp(channels)
    torch.testing.assert_close(invert(image), 1 - image)
    torch.testing.assert_close(invert(invert(image)), image)


def test_grey_conversion_replicates_the_luma():
    red = torch.zeros(3, 8, 8)
    red[0] = 1.0
    torch.testing.assert_close(to_grey(red), torch.full((3, 8, 8), 0.299))
    one = ramp(1)
    assert torch.equal(to_grey(one), one)
    assert is_grey(to_grey(ramp(3))) and not is_grey(ramp(3))


def test_stain_shift_moves_each_channel_around_its_mean():
    # a constant image only gets the offsets
    shifted = stain_shift(constant(0.5), torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.1, -0.1, 0.0]))
    torch.testing.assert_close(shifted[:, 0, 0], torch.tensor([0.6, 0.4, 0.5]))
    # two levels 0.2 / 0.6 (mean 0.4): gain 2 -> 0.0 / 0.8, gain 0.5 -> 0.3 / 0.5, gain 1 unchanged
    image = constant(0.2, size=8)
    image[:, :, 4:] = 0.6
    out = stain_shift(image, torch.tensor([2.0, 0.5, 1.0]), torch.zeros(3))
    torch.testing.assert_close(out[:, 0, [0, 7]], torch.tensor([[0.0, 0.8], [0.3, 0.5], [0.2, 0.6]]))


@pytest.mark.parametrize("channels", [1, 3])
def test_random_stain_tints_within_range(channels):
    image = ramp(1).expand(channels, -1, -1)  # grey, replicated
    out = random_stain(image, Microscopy(), generator())
    assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, image)
    assert is_grey(out) == (channels == 1)  # a grey image replicated to RGB is tinted


@pytest.mark.parametrize("shot, read", [(0.1, 0.0), (0.0, 0.05), (0.1, 0.05)])
def test_camera_noise_has_the_asked_std(shot, read):
    image = constant(0.5)
    noisy = camera_noise(image, shot, read, generator())
    expected = math.sqrt(shot**2 * 0.5 + read**2)
    assert abs(float((noisy - image).std()) - expected) < 0.05 * expected
    assert abs(float((noisy - image).mean())) < 0.01


def test_shot_noise_grows_with_the_signal_and_stays_in_range():
    dark, bright = camera_noise(constant(0.0), 0.2, 0.0, generator()), camera_noise(constant(0.25), 0.2, 0.0, generator())
    assert torch.equal(dark, constant(0.0))  # no photons, no photon noise
    assert float(bright.std()) > 0.08  # 0.2 * sqrt(0.25) = 0.1, a little less where clamped at 0
    very = camera_noise(constant(0.02), 0.3, 0.05, generator())
    assert 0 <= float(very.min()) and float(very.max()) <= 1


def test_noise_keeps_grey_images_grey_and_colour_channels_independent():
    grey_noisy = camera_noise(constant(0.5), 0.1, 0.05, generator())
    assert is_grey(grey_noisy) and not torch.equal(grey_noisy, constant(0.5))
    colour = constant(0.5)
    colour[0] = 0.4
    delta = (camera_noise(colour, 0.1, 0.05, generator()) - colour).flatten(1)
    correlation = torch.corrcoef(delta)[0, 1:]
    assert float(correlation.abs().max()) < 0.1


def test_percentile_stretch_reads_as_the_file_reader_does():
    image = torch.rand(3, 40, 36, generator=generator()) * 0.1 + 0.02
    image[1] = 0.3  # a flat channel becomes 0
    expected = percentile_scaled(image.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(percentile_stretch(image).permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("restretch", [False, True])
def test_every_step_keeps_shape_range_and_finiteness(channels, restretch):
    aug = Microscopy(grey_p=1.0, invert_p=1.0, stain_p=1.0, gamma_p=1.0, dim_p=1.0, noise_p=1.0, restretch=restretch)
    for seed in range(4):
        out = microscopy_photometric(ramp(channels), aug, generator(seed))
        assert out.shape == (channels, 32, 32) and torch.isfinite(out).all()
        assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_no_step_drawn_leaves_the_image_and_grey_stays_grey_without_stain():
    image = ramp(3)
    assert torch.equal(microscopy_photometric(image, NO_STEP, generator()), image)
    no_stain = Microscopy(grey_p=1.0, invert_p=1.0, stain_p=0.0, gamma_p=1.0, dim_p=1.0, noise_p=1.0)
    assert is_grey(microscopy_photometric(ramp(1).expand(3, -1, -1), no_stain, generator()))


def test_dimming_then_restretch_gives_back_the_range():
    dim_only = Microscopy(grey_p=0.0, invert_p=0.0, stain_p=0.0, gamma_p=0.0, dim_p=1.0, noise_p=0.0)
    image = ramp(3)
    dimmed = microscopy_photometric(image, dim_only, generator())
    assert float(dimmed.max()) < 1.0  # fixed reading: the network sees the dim image
    restretched = microscopy_photometric(image, replace(dim_only, restretch=True), generator())
    torch.testing.assert_close(restretched, percentile_stretch(image), atol=1e-5, rtol=0)


def test_the_clean_image_stays_common():
    image = ramp(3, size=8)
    g = generator()
    clean = sum(torch.equal(microscopy_photometric(image, Microscopy(), g), image) for _ in range(500))
    assert 0.08 < clean / 500 < 0.2  # each step at 0.2-0.4: about 13% untouched by all six


def _previous_colour_path(sample: dict, size: int, aug: Augment, g: torch.Generator) -> dict:
    """TrainTransform as it was before --photometric, written out from the existing functions."""
    def draw(low, high):
        return low + (high - low) * float(torch.rand((), generator=g))

    zoom = math.exp(draw(math.log(aug.zoom[0]), math.log(aug.zoom[1])))
    image, labels = random_scaled_crop(sample["image"], sample["labels"], size, zoom, g)
    image, labels = random_dihedral(image, labels, g)
    if draw(0, 1) < aug.rotation_p:
        image, labels = rotate(image, labels, draw(-aug.rotation, aug.rotation))
    image = color_jitter(image, aug, g)
    if draw(0, 1) < aug.blur_p:
        image = gaussian_blur(image, draw(*aug.blur_sigma))
    return {"image": image.clamp(0, 1), "labels": labels}


@pytest.mark.parametrize("seed", range(4))
def test_colour_is_bit_identical_to_the_previous_path(seed):
    aug = training_augment("colour", (0.7, 1.4))
    assert aug == Augment(zoom=(0.7, 1.4)) and training_augment() == Augment()
    forced = Augment(rotation_p=1.0, blur_p=1.0)  # both optional branches taken
    for a in (aug, forced):
        out = TrainTransform(32, a)(item(), generator(seed))
        expected = _previous_colour_path(item(), 32, a, generator(seed))
        assert torch.equal(out["image"], expected["image"]) and torch.equal(out["labels"], expected["labels"])


def test_microscopy_repeats_keeps_the_labels_and_differs_from_colour():
    colour = TrainTransform(32, training_augment("colour"))
    micro = TrainTransform(32, training_augment("microscopy"))
    forced = TrainTransform(32, Augment(microscopy=EVERY_STEP))
    for seed in range(3):
        a, b = micro(item(), generator(seed)), micro(item(), generator(seed))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
        plain, strong = colour(item(), generator(seed)), forced(item(), generator(seed))
        assert torch.equal(strong["labels"], plain["labels"])  # geometry draws come first
        assert not torch.equal(strong["image"], plain["image"])
        assert strong["image"].shape == (3, 32, 32) and 0 <= float(strong["image"].min()) <= float(strong["image"].max()) <= 1


def test_build_datasets_applies_the_photometric_choice(tmp_path):
    root = nuclei_folder(tmp_path / "dsb")
    spec = f"folder:{root}"
    options = dict(image_size=32, seed=0, train_size=1, val_size=1, val_split=0.4)
    train, _ = build_datasets(spec, photometric="microscopy", **options)
    assert train.transform.augment.microscopy == Microscopy()
    torch.manual_seed(0)
    for i in range(len(train)):
        image = train[i]["image"]
        assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
        assert 0 <= float(image.min()) and float(image.max()) <= 1
    percentile, _ = build_datasets(spec, photometric="microscopy", reading=Reading("percentile"), **options)
    assert percentile.transform.augment.microscopy.restretch
    colour, _ = build_datasets(spec, **options)
    assert colour.transform.augment == Augment()
    with pytest.raises(ConfigError, match="--photometric"):
        build_datasets(spec, photometric="histology", **options)
