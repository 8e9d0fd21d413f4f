"""Paired augmentation: image and labels move together, labels are never blended, workers are seeded."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_fixtures import cvppp
from instseg.data import LabelledImages
from instseg.data.layouts import DataSpec, discover
from instseg.data.synthetic import render_plant
from instseg.data.transforms import (
    Augment,
    TrainTransform,
    resize_image_tensor,
    rotate,
)
from instseg.train.trainer import seed_worker
from instseg.io.images import resize_image

NO_COLOUR = Augment(brightness=0.0, contrast=0.0, saturation=0.0, blur_p=0.0, rotation_p=1.0)


def plant_item(size=(53, 50), index=0):
    image, labels = render_plant(0, index, size)
    return {"image": torch.from_numpy(image).permute(2, 0, 1).float() / 255,
            "labels": torch.from_numpy(labels).long(), "name": f"p{index}"}


def coded_item(size=(53, 50)):
    """Labels in blocks; the image's red channel encodes each pixel's id, so geometry can be checked."""
    h, w = size
    labels = torch.zeros(size, dtype=torch.long)
    for k, (y, x) in enumerate(((4, 4), (4, 28), (28, 4), (28, 28)), start=1):
        labels[y:y + 20, x:x + 18] = k
    image = torch.stack([labels.float() / 10, torch.full(size, 0.5), torch.zeros(size)])
    return {"image": image, "labels": labels, "name": "coded"}


@pytest.mark.parametrize("size", [(27, 26), (71, 64), (200, 190)])
def test_torch_resize_matches_the_prediction_path(size):
    """Training crops resize in torch, prediction with Pillow (imageio): they must agree."""
    image, _ = render_plant(1, 0, (106, 100))
    x = image.astype(np.float32) / 255
    torch_image = resize_image_tensor(torch.from_numpy(x).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(torch_image, resize_image(x, size), atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_geometry_moves_image_and_labels_together(seed):
    item = coded_item()
    out = TrainTransform(32, NO_COLOUR)(item, torch.Generator().manual_seed(seed))
    assert out["image"].shape == (3, 32, 32) and out["labels"].shape == (32, 32)
    labels, red = out["labels"], out["image"][0]
    # away from edges (where bilinear mixes neighbours), the image says the same id as the labels
    # (resize and rotation each mix up to one pixel: keep pixels 2 away from any edge)
    interior = torch.ones_like(labels, dtype=torch.bool)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            interior &= torch.roll(labels, (dy, dx), (0, 1)) == labels
    interior[[0, 1, -2, -1], :] = False
    interior[:, [0, 1, -2, -1]] = False
    assert interior.sum() > 50
    torch.testing.assert_close(red[interior], labels[interior].float() / 10, atol=0.02, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_labels_are_never_blended_and_outputs_are_valid(seed):
    item = plant_item()
    out = TrainTransform(40, Augment(zoom=(0.6, 1.6), rotation_p=1.0, blur_p=1.0))(
        item, torch.Generator().manual_seed(seed))
    assert set(out["labels"].unique().tolist()) <= set(item["labels"].unique().tolist())
    assert out["labels"].dtype == torch.int64 and out["image"].dtype == torch.float32
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert out["image"].is_contiguous() and out["name"] == "p0"


def test_rotation_keeps_ids_and_fills_corners_with_background():
    labels = torch.ones(20, 20, dtype=torch.long) * 3
    image = torch.ones(3, 20, 20)
    rot_image, rot_labels = rotate(image, labels, 30.0)
    assert set(rot_labels.unique().tolist()) == {0, 3}
    assert rot_labels[0, 0] == 0 and rot_labels[10, 10] == 3 and float(rot_image[:, 0, 0].max()) == 0.0


def test_no_augment_is_the_working_size_crop():
    """Without augmentation the crop is the image at its working size (shorter side -> 32)."""
    item = plant_item((64, 32))  # working size 64x32 -> 32 crops, vertical offset only
    out = TrainTransform(32, None)(item, torch.Generator().manual_seed(0))
    full = item["image"]
    offsets = [y for y in range(33) if torch.equal(full[:, y:y + 32, :], out["image"])]
    assert len(offsets) == 1
    assert torch.equal(item["labels"][offsets[0]:offsets[0] + 32], out["labels"])


def test_zoom_changes_the_scale_of_objects():
    item = coded_item((64, 64))
    small = TrainTransform(32, Augment(zoom=(0.5, 0.5), rotation_p=0, blur_p=0))(item, torch.Generator().manual_seed(0))
    large = TrainTransform(32, Augment(zoom=(2.0, 2.0), rotation_p=0, blur_p=0))(item, torch.Generator().manual_seed(0))
    # zoom 0.5 shows twice the field of view (padded): all four blocks and a lot of background
    assert len(small["labels"].unique()) == 5
    assert (small["labels"] == 0).float().mean() > (large["labels"] == 0).float().mean()


def test_seeded_generator_repeats_and_seeds_differ():
    item = plant_item()
    t = TrainTransform(32)
    a = t(item, torch.Generator().manual_seed(5))
    b = t(item, torch.Generator().manual_seed(5))
    c = t(item, torch.Generator().manual_seed(6))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["image"], c["image"])


def test_workers_are_seeded_separately_and_repeatably(tmp_path):
    root = cvppp(tmp_path / "A1", n=1)
    sample = discover(DataSpec("cvppp", str(root))).samples[0]
    dataset = LabelledImages([sample] * 4, TrainTransform(24))  # the same image, four times

    def batches():
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(3))
        return [b["image"] for b in loader]

    first, second = batches(), batches()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # items 0 and 1 are the first item of worker 0 and worker 1: different streams, different crops
    assert not torch.equal(first[0], first[1])
