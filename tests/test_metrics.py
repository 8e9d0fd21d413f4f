import numpy as np
import pytest

from instseg.torchfree.metrics import (
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
