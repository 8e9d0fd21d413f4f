import numpy as np
import pytest

from instseg.metrics.scores import (
    best_dice, count_instances, dice, difference_in_count, foreground_dice, score_image, summarize,
    symmetric_best_dice,
)

GT = np.array([[1, 1, 2, 2],
               [1, 1, 2, 2]])


def test_dice_by_hand():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 0, 0], bool)
    assert dice(a, b) == pytest.approx(2 * 1 / 3)
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 0.0  # official convention


def test_perfect_prediction():
    s = score_image(GT.copy(), GT)
    assert (s.sbd, s.fg_dice, s.dic, s.abs_dic) == (1.0, 1.0, 0, 0)


def test_swapped_labels_score_the_same():
    swapped = np.where(GT == 1, 2, 1)
    assert symmetric_best_dice(swapped, GT) == 1.0


def test_one_predicted_blob_for_two_leaves():
    pred = np.ones_like(GT)
    # Dice(blob, leaf) = 2*4 / (8 + 4) = 2/3 in both directions.
    assert best_dice(pred, GT) == pytest.approx(2 / 3)
    assert best_dice(GT, pred) == pytest.approx(2 / 3)
    assert difference_in_count(pred, GT) == -1


def test_asymmetric_case_takes_the_minimum():
    gt = np.array([[1, 1, 1, 1, 2, 2, 0, 0]])
    pred = np.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    # BestDice(pred, gt) = 1 (leaf 1 perfect); BestDice(gt, pred) = (1 + 0) / 2.
    assert best_dice(pred, gt) == 1.0
    assert best_dice(gt, pred) == 0.5
    assert symmetric_best_dice(pred, gt) == 0.5
    assert foreground_dice(pred, gt) == pytest.approx(2 * 4 / (4 + 6))


def test_empty_prediction_scores_zero():
    s = score_image(np.zeros_like(GT), GT)
    assert (s.sbd, s.fg_dice, s.dic, s.abs_dic) == (0.0, 0.0, -2, 2)


def test_empty_ground_truth():
    s = score_image(GT, np.zeros_like(GT))
    assert (s.sbd, s.fg_dice, s.dic, s.abs_dic) == (0.0, 0.0, 2, 2)


def test_non_contiguous_and_16_bit_ids():
    pred = np.where(GT == 1, 300, 65535).astype(np.uint16)
    assert symmetric_best_dice(pred, GT) == 1.0
    assert count_instances(pred) == 2


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        symmetric_best_dice(GT, GT[:, :3])


def test_summary_mean_and_std():
    summary = summarize([score_image(GT, GT), score_image(np.zeros_like(GT), GT)])
    assert summary["sbd"] == {"mean": 0.5, "std": 0.5}
    assert summary["dic"]["mean"] == -1.0
    assert summary["abs_dic"]["mean"] == 1.0


# -- DSB2018 average precision ----------------------------------------------------------------------

def strip(*spans: tuple[int, int, int]) -> np.ndarray:
    """A 1 x 20 label map: (id, start, stop) spans."""
    labels = np.zeros((1, 20), np.int32)
    for ident, start, stop in spans:
        labels[0, start:stop] = ident
    return labels


def test_average_precision_by_hand():
    from instseg.metrics.scores import AP_THRESHOLDS, Overlap, average_precision

    gt = strip((1, 0, 10), (2, 10, 20))
    # pred 1 = pixels 0..8: 8 of gt 1's 10 (IoU 0.8); pred 2 = pixels 8..20: gt 2's 10 plus 2 of gt 1 (IoU 10/12)
    pred = strip((1, 0, 8), (2, 8, 20))
    overlap = Overlap.of(pred, gt)
    iou = dict(zip(zip(overlap.pred_index.tolist(), overlap.gt_index.tolist()), overlap.pair_iou()))
    assert iou == pytest.approx({(0, 0): 0.8, (1, 0): 2 / 20, (1, 1): 10 / 12})
    result = average_precision(pred, gt)
    # thresholds 0.5..0.75 (6 of them): both match -> 2 / (2 + 0 + 0) = 1; 0.8 (IoU 0.8 is not > 0.8): pred 2
    # only -> 1 / (2 + 2 - 1) = 1/3; 0.85..0.95 (3): none -> 0.
    expected = (6 * 1.0 + 1 / 3 + 3 * 0.0) / len(AP_THRESHOLDS)
    assert result.ap == pytest.approx(expected) and result.ap50 == 1.0
    assert (result.precision50, result.recall50) == (1.0, 1.0)


def test_average_precision_counts_misses_and_false_positives():
    from instseg.metrics.scores import average_precision

    gt = strip((1, 0, 5), (2, 5, 10), (3, 10, 15))
    pred = strip((7, 0, 5), (8, 16, 20))  # one exact match, one false positive, two misses
    result = average_precision(pred, gt)
    assert result.ap == pytest.approx(1 / 4) and result.ap50 == pytest.approx(1 / 4)  # 1 / (1 + 1 + 2)
    assert result.precision50 == 0.5 and result.recall50 == pytest.approx(1 / 3)


def test_average_precision_of_empty_maps():
    from instseg.metrics.scores import average_precision

    empty = np.zeros((1, 20), np.int32)
    assert average_precision(empty, empty).ap == 1.0  # nothing to find, nothing false
    missed = average_precision(empty, strip((1, 0, 5)))
    assert (missed.ap, missed.precision50, missed.recall50) == (0.0, 1.0, 0.0)
    spurious = average_precision(strip((1, 0, 5)), empty)
    assert (spurious.ap, spurious.precision50, spurious.recall50) == (0.0, 0.0, 1.0)


def test_score_image_and_summary_carry_the_ap_columns():
    s = score_image(GT, GT)
    assert (s.ap, s.ap50, s.precision50, s.recall50) == (1.0, 1.0, 1.0, 1.0)
    assert summarize([s])["ap"] == {"mean": 1.0, "std": 0.0}


def brute_force_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, int]:
    """SBD, FG Dice and DiC straight from the definitions, mask by mask (the module docstring)."""
    def best(a, b):
        ids_a, ids_b = [i for i in np.unique(a) if i], [i for i in np.unique(b) if i]
        if not ids_a or not ids_b:
            return 0.0
        return float(np.mean([max(dice(a == i, b == j) for j in ids_b) for i in ids_a]))
    n = lambda m: len([i for i in np.unique(m) if i])  # noqa: E731
    return min(best(pred, gt), best(gt, pred)), dice(pred > 0, gt > 0), n(pred) - n(gt)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_score_image_matches_the_definitions_on_random_maps(dtype):
    rng = np.random.default_rng(3)
    for _ in range(5):
        pred = rng.choice([0, 3, 4, 9, 200], size=(12, 14)).astype(dtype)
        gt = rng.choice([0, 1, 2, 7], size=(12, 14)).astype(dtype)
        scores = score_image(pred, gt)
        sbd, fg, dic = brute_force_scores(pred, gt)
        assert (scores.sbd, scores.fg_dice, scores.dic) == (pytest.approx(sbd), pytest.approx(fg), dic)


def test_the_sparse_table_gives_the_dense_tables_figures(monkeypatch):
    """Maps with huge or negative ids (np.unique) and tables too large to count densely (pairs
    only) score as the lookup-and-dense path does."""
    import instseg.metrics.scores as scores

    rng = np.random.default_rng(5)
    pred = rng.integers(0, 40, size=(30, 30))
    gt = rng.integers(0, 30, size=(30, 30))
    dense = score_image(pred, gt)
    monkeypatch.setattr(scores, "DENSE_PAIRS", 1)
    assert score_image(pred, gt) == dense
    assert score_image(pred.astype(np.int64) * 10**12, gt) == dense  # ids past the lookup table
    monkeypatch.setattr(scores, "LOOKUP_IDS", 1)
    assert score_image(pred, gt) == dense


def test_many_instances_are_scored_without_a_dense_table():
    """65535 ids on each side would make a dense P x G table of 4.3e9 cells."""
    pred = np.arange(256 * 256, dtype=np.int64).reshape(256, 256) % 65535 + 1
    scores = score_image(pred, pred.copy())
    assert (scores.sbd, scores.ap, scores.dic) == (1.0, 1.0, 0)
