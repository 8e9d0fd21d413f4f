"""Seed clustering of spatial embeddings (instseg.instances.seeds): hand-built outputs, and a
brute-force reference (every foreground pixel per seed) that the grid must match exactly."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from instseg.errors import DataError
from instseg.instances.seeds import _descending, seed_labels, seed_scores

SCALE = 8.0  # pixels per embedding unit
HIGH, LOW = 8.0, -8.0  # seed logits: score ~1 on instances, ~0 on the background


def sigma_for(radius_px: float) -> float:
    """Raw sigma whose bandwidth puts phi = 0.5 at `radius_px` pixels: s (r / S)^2 = ln 2."""
    return math.log(math.log(2.0) / (radius_px / SCALE) ** 2) / 10.0


def perfect_outputs(labels: np.ndarray, n_sigma: int = 1, logits: dict[int, float] | None = None) -> np.ndarray:
    """(2 + n_sigma + 1) x H x W outputs of a perfect network: every pixel embedded at its instance's
    centroid, phi = 0.5 at the instance's radius (n_sigma = 2: its half-extent per axis), seed
    logit HIGH (or `logits[id]`) on instances and LOW on the background."""
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    out = np.zeros((3 + n_sigma,) + labels.shape, dtype=np.float32)
    out[0], out[1], out[-1] = rows / SCALE, cols / SCALE, LOW
    for k in np.unique(labels[labels > 0]):
        mask = labels == k
        out[0][mask], out[1][mask] = rows[mask].mean() / SCALE, cols[mask].mean() / SCALE
        if n_sigma == 1:
            out[2][mask] = sigma_for(math.sqrt(mask.sum() / math.pi))
        else:
            for axis, coords in enumerate((rows[mask], cols[mask])):
                out[2 + axis][mask] = sigma_for((coords.max() - coords.min() + 1) / 2)
        out[-1][mask] = (logits or {}).get(int(k), HIGH)
    return out


def reference_labels(embedding: np.ndarray, foreground: np.ndarray, threshold: float = 0.5,
                     min_size: int = 0) -> np.ndarray:
    """The algorithm as written (Neven et al.), every foreground pixel tested for every seed."""
    fg = np.flatnonzero(foreground)
    flat = embedding.reshape(len(embedding), -1)[:, fg]
    centres, logits = flat[:2].astype(np.float64), flat[-1]
    s = np.exp(np.clip(10.0 * flat[2:-1].astype(np.float64), -80.0, 80.0))
    s = np.vstack([s, s]) if len(s) == 1 else s
    scores = seed_scores(embedding).ravel()[fg]
    unclustered, found, count = np.ones(len(fg), bool), np.zeros(len(fg), np.int32), 0
    while unclustered.any():
        open_ = np.flatnonzero(unclustered)
        seed = open_[np.argmax(logits[open_])]
        if scores[seed] < threshold:
            break
        phi = np.exp(-(s[:, seed:seed + 1] * (centres - centres[:, seed:seed + 1]) ** 2).sum(axis=0))
        proposal = phi > 0.5
        fresh = proposal & unclustered
        if proposal.sum() > max(min_size, 1) and fresh.sum() > proposal.sum() / 2:
            count += 1
            found[fresh] = count
        unclustered &= ~proposal
        unclustered[seed] = False
    labels = np.zeros(foreground.size, np.int32)
    labels[fg] = found
    return labels.reshape(foreground.shape)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The two label maps hold the same instances, whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
            and bool(((pairs[0] == 0) == (pairs[1] == 0)).all()))


def separated() -> np.ndarray:
    labels = np.zeros((48, 48), np.int32)
    labels[4:12, 4:12], labels[20:30, 30:44], labels[36:44, 8:16] = 1, 2, 3
    return labels


def touching() -> np.ndarray:
    """Two squares sharing an edge, a rectangle below them touching both, and a disc apart."""
    labels = np.zeros((48, 48), np.int32)
    labels[8:18, 8:18], labels[8:18, 18:28], labels[18:24, 8:28] = 1, 2, 3
    rows, cols = np.indices(labels.shape)
    labels[(rows - 36) ** 2 + (cols - 36) ** 2 <= 36] = 4
    return labels


def noisy_outputs(seed: int, n_sigma: int) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of an imperfect network on random discs: noisy offsets, sigmas and seeds, stray
    foreground pixels embedded anywhere, and a few pixels with extreme sigmas (whole-image and
    single-point proposals)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((64, 64))
    labels = np.zeros((64, 64), np.int32)
    for k in range(1, 9):
        r, c, radius = rng.uniform(6, 58), rng.uniform(6, 58), rng.uniform(3, 7)
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2] = k
    out = perfect_outputs(labels, n_sigma).astype(np.float64)
    out[:2] += rng.normal(0, 1.5 / SCALE, size=(2, 64, 64))
    out[2:-1] += rng.normal(0, 0.08, size=(n_sigma, 64, 64))
    out[-1] = np.where(labels > 0, rng.normal(1.0, 2.0, (64, 64)), rng.normal(-1.0, 1.0, (64, 64)))
    foreground = (labels > 0) | (rng.random((64, 64)) < 0.05)
    stray = foreground & (labels == 0)
    out[:2, stray] = rng.uniform(0, 64 / SCALE, size=(2, stray.sum()))
    extreme = rng.choice(np.flatnonzero(foreground), size=4, replace=False)
    out[2:-1].reshape(n_sigma, -1)[:, extreme] = rng.choice([-50.0, 50.0], size=(n_sigma, 4))
    return out.astype(np.float32), foreground


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("make", [separated, touching])
def test_a_perfect_network_gives_back_the_truth(make, n_sigma):
    truth = make()
    labels = seed_labels(perfect_outputs(truth, n_sigma), truth > 0)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert same_partition(labels, truth)


def test_ids_follow_the_seed_order():
    truth = separated()
    labels = seed_labels(perfect_outputs(truth, logits={1: 2.0, 2: 6.0, 3: 4.0}), truth > 0)
    assert np.array_equal(labels, np.select([truth == 2, truth == 3, truth == 1], [1, 2, 3], 0))


def test_instances_whose_seeds_score_below_the_threshold_are_not_found():
    truth = touching()
    embedding = perfect_outputs(truth, logits={2: -1.0, 4: -1.0})  # score 0.27
    labels = seed_labels(embedding, truth > 0)
    assert (labels[(truth == 2) | (truth == 4)] == 0).all()
    assert same_partition(np.where(np.isin(truth, [1, 3]), truth, 0), labels)
    assert same_partition(seed_labels(embedding, truth > 0, threshold=0.25), truth)


def test_a_second_sigma_channel_separates_thin_bars_that_one_sigma_merges():
    """Bars 2 x 30 px, one on the other: their centres are 2 px apart; one sigma (radius
    sqrt(60 / pi) = 4.4 px) takes both, one per axis (1 px along the rows) only one."""
    truth = np.zeros((24, 40), np.int32)
    truth[10:12, 5:35], truth[12:14, 5:35] = 1, 2
    merged = seed_labels(perfect_outputs(truth, n_sigma=1), truth > 0)
    assert np.array_equal(merged, (truth > 0).astype(np.int32))
    assert np.array_equal(seed_labels(perfect_outputs(truth, n_sigma=2), truth > 0), truth)


def strip(split: int, wide_seed_only: bool = False) -> np.ndarray:
    """4 x 8 outputs: A = columns < split embedded at (0, 0) with a 0.5-unit radius, seeding first;
    B = the rest at (0, 1) with a 2-unit radius (its proposal takes A too)."""
    out = np.zeros((4, 4, 8), np.float32)
    a = np.arange(8) < split
    out[1, :, ~a] = 1.0
    out[2, :, a], out[2, :, ~a] = math.log(math.log(2.0) / 0.25) / 10, math.log(math.log(2.0) / 4.0) / 10
    out[3, :, a], out[3, :, ~a] = 5.0, 3.0
    if wide_seed_only:  # the other pixels of B would only take B: if they could seed, B would be found
        out[2, :, ~a] = math.log(math.log(2.0) / 0.25) / 10
        out[2, 0, split], out[3, 0, split] = math.log(math.log(2.0) / 4.0) / 10, 4.0
    return out


@pytest.mark.parametrize("split, b_found", [(3, True), (4, False), (6, False)])
def test_a_proposal_is_kept_only_if_more_than_half_of_it_is_unclustered(split, b_found):
    """A's proposal is A; B's holds A (clustered) and B: 20 of 32 unclustered keeps B's own
    pixels as instance 2 (A keeps id 1); 16 of 32 or 8 of 32 makes nothing."""
    labels = seed_labels(strip(split), np.ones((4, 8), bool))
    a = np.broadcast_to(np.arange(8) < split, (4, 8))
    assert (labels[a] == 1).all()
    assert (labels[~a] == (2 if b_found else 0)).all()


def test_the_pixels_of_a_rejected_proposal_no_longer_seed():
    labels = seed_labels(strip(6, wide_seed_only=True), np.ones((4, 8), bool))
    assert np.array_equal(np.unique(labels[:, 6:]), [0]) and (labels[:, :6] == 1).all()


def test_min_size_drops_proposals_of_at_most_that_many_pixels():
    truth = np.zeros((32, 32), np.int32)
    truth[2:5, 2:5], truth[10:14, 10:14], truth[20, 20], truth[26, 26:28] = 1, 2, 3, 4  # 9, 16, 1, 2 px
    embedding = perfect_outputs(truth)
    assert np.array_equal(np.unique(truth[seed_labels(embedding, truth > 0, min_size=9) > 0]), [2])
    assert np.array_equal(np.unique(truth[seed_labels(embedding, truth > 0, min_size=8) > 0]), [1, 2])
    assert np.array_equal(np.unique(truth[seed_labels(embedding, truth > 0) > 0]), [1, 2, 4])  # 1 px: never


def test_only_foreground_pixels_are_clustered():
    truth = separated()
    foreground = truth > 0
    foreground[4:8] = False
    labels = seed_labels(perfect_outputs(truth), foreground)
    assert not labels[~foreground].any()
    assert same_partition(labels, np.where(foreground, truth, 0))


@pytest.mark.parametrize("n_sigma", [1, 2])
def test_an_empty_foreground_gives_no_instances(n_sigma):
    labels = seed_labels(perfect_outputs(separated(), n_sigma), np.zeros((48, 48), bool))
    assert labels.dtype == np.int32 and labels.shape == (48, 48) and not labels.any()


def test_a_tiny_bandwidth_proposes_the_whole_foreground():
    """sigma = -50: s = exp(-80) after clipping, a radius of 2e17 units (the whole-scan path)."""
    truth = touching()
    embedding = perfect_outputs(truth)
    embedding[2, 12, 12], embedding[3, 12, 12] = -50.0, 20.0
    assert np.array_equal(seed_labels(embedding, truth > 0), (truth > 0).astype(np.int32))


def test_a_huge_bandwidth_still_proposes_the_pixels_at_the_centre():
    truth = separated()
    embedding = perfect_outputs(truth)
    embedding[2][truth == 2] = 50.0  # s = exp(80): only identical embeddings
    assert same_partition(seed_labels(embedding, truth > 0), truth)


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_the_grid_loses_nothing_against_the_brute_force_reference(seed, n_sigma):
    embedding, foreground = noisy_outputs(seed, n_sigma)
    for threshold, min_size in ((0.5, 0), (0.3, 4), (0.8, 10)):
        expected = reference_labels(embedding, foreground, threshold, min_size)
        assert expected.max() >= 3  # the case is not trivial
        assert np.array_equal(seed_labels(embedding, foreground, threshold=threshold, min_size=min_size), expected)


@pytest.mark.parametrize("make", [separated, touching])
def test_ties_between_seeds_are_broken_like_the_reference(make):
    truth = make()
    embedding = perfect_outputs(truth)  # every instance pixel has the same logit
    assert np.array_equal(seed_labels(embedding, truth > 0), reference_labels(embedding, truth > 0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_are_a_data_error(bad):
    embedding = perfect_outputs(separated())
    embedding[1, 5, 5] = bad
    with pytest.raises(DataError, match="NaN or Inf"):
        seed_labels(embedding, separated() > 0)


@pytest.mark.parametrize("shape, fg_shape", [((3, 8, 8), (8, 8)), ((6, 8, 8), (8, 8)), ((4, 8, 8), (8, 9)),
                                             ((4, 8), (8, 8))])
def test_a_wrong_layout_is_a_value_error(shape, fg_shape):
    with pytest.raises(ValueError):
        seed_labels(np.zeros(shape, np.float32), np.ones(fg_shape, bool))


def test_seed_scores_are_a_safe_float32_sigmoid():
    embedding = np.zeros((5, 2, 2), np.float32)
    embedding[-1] = [[0.0, math.log(3.0)], [1000.0, -1000.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = seed_scores(embedding)
    assert scores.dtype == np.float32 and scores.shape == (2, 2)
    np.testing.assert_allclose(scores, [[0.5, 0.75], [1.0, 0.0]], atol=1e-7)
    with pytest.raises(ValueError):
        seed_scores(np.zeros((3, 2, 2), np.float32))


def test_descending_order_is_a_stable_sort_of_the_largest_first():
    values = np.array([0.0, -0.0, 2.5, -3.0, 2.5, 1e30, -1e-40, 1e-40, -3.0, 7.0], np.float32)
    assert np.array_equal(_descending(values), np.argsort(-values, kind="stable"))
    noise = np.random.default_rng(0).normal(size=5000).astype(np.float32).round(1)  # many ties
    assert np.array_equal(_descending(noise), np.argsort(-noise, kind="stable"))
