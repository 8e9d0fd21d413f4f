import numpy as np
import pytest

from instseg.data import SyntheticLeaves
from instseg.data.synthetic import render_plant


def test_deterministic_per_seed_and_index():
    a_img, a_lab = render_plant(3, 7, 96)
    b_img, b_lab = render_plant(3, 7, 96)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, _ = render_plant(3, 8, 96)
    d_img, _ = render_plant(4, 7, 96)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)


def test_train_and_val_splits_differ():
    assert not np.array_equal(render_plant(0, 0, 64, "train")[0], render_plant(0, 0, 64, "val")[0])


@pytest.mark.parametrize("size", [64, 128, (96, 160), 512])
def test_labels_are_consistent(size):
    for index in range(6 if size != 512 else 2):
        image, labels = render_plant(0, index, size)
        h, w = (size, size) if isinstance(size, int) else size
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert labels.shape == (h, w)
        ids = np.unique(labels)
        n = ids.max()
        assert list(ids) == list(range(n + 1)), "ids must be contiguous 1..N with 0 = background"
        assert 1 <= n <= 20
        fg = labels > 0
        assert 0.01 < fg.mean() < 0.6
        # leaves are green, soil is brown: the foreground really is where the labels say
        g_minus_r = image[..., 1].astype(int) - image[..., 0].astype(int)
        assert g_minus_r[fg].mean() > 30 > g_minus_r[~fg].mean()


def test_leaf_counts_span_the_advertised_range():
    counts = [render_plant(0, i, 128)[1].max() for i in range(60)]
    assert min(counts) >= 4 and max(counts) <= 20
    assert np.mean([5 <= c <= 20 for c in counts]) > 0.95
    assert max(counts) >= 16 and min(counts) <= 8


def test_dataset_items():
    ds = SyntheticLeaves(3, 64, seed=1, split="val")
    item = ds[2]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype.is_floating_point
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["labels"].shape == (64, 64) and str(item["labels"].dtype) == "torch.int64"
    assert item["name"] == "synthetic-val-00002"
    with pytest.raises(IndexError):
        ds[3]


def test_rendered_items_are_cached_and_identical():
    ds = SyntheticLeaves(2, 64)
    first = ds[1]
    assert 1 in ds._cache
    again = ds[1]
    assert np.array_equal(first["image"].numpy(), again["image"].numpy())
    assert np.array_equal(first["labels"].numpy(), again["labels"].numpy())


def test_cache_respects_its_budget(monkeypatch):
    monkeypatch.setattr(SyntheticLeaves, "CACHE_BYTES", 64 * 64 * 5)  # one RGB image + uint16 labels
    ds = SyntheticLeaves(3, 64)
    for i in range(3):
        ds[i]
    assert list(ds._cache) == [0]
