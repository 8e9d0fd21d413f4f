import math

import pytest
import torch

from instseg.models.interfaces import SegOutput, add_positions
from instseg.objectives.spatial import SPATIAL_WEIGHTS, SpatialEmbeddingLoss, lovasz_hinge
from instseg.train.losses import MultiTaskLoss

S = 8.0  # pixels per unit


def jaccard_loss(mistakes: set[int], targets: list[int]) -> float:
    """The paper's Delta_J of a set of mispredicted pixels: 1 - |intersection| / |union|."""
    if not mistakes:
        return 0.0
    positives = sum(targets)
    missed = sum(targets[i] for i in mistakes)
    return 1 - (positives - missed) / (positives + len(mistakes) - missed)


def reference_lovasz(logits: list[float], targets: list[int]) -> float:
    """Lovasz extension of Delta_J at the hinge errors, one row, from the definition."""
    errors = [max(0.0, 1 - x * (2 * y - 1)) for x, y in zip(logits, targets)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, previous = 0.0, 0.0
    for n in range(1, len(order) + 1):
        current = jaccard_loss(set(order[:n]), targets)
        total += errors[order[n - 1]] * (current - previous)
        previous = current
    return total


def test_lovasz_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0], [0.5, -2.0]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 0]])
    # row 0 perfect (margins >= 1); row 1 errors (0.5, 1): the negative first, Delta 1/2, then
    # both, Delta 1 -> 1 * 1/2 + 0.5 * 1/2; row 2 has no positive: its largest error, 1.5.
    assert lovasz_hinge(logits, targets).tolist() == pytest.approx([0.0, 0.75, 1.5])
    # row 1 is 1/2 (1 + x_neg) + 1/2 (1 - x_pos) near these logits
    row = torch.tensor([[0.5, 0.0]], requires_grad=True)
    lovasz_hinge(row, targets[1:2]).sum().backward()
    assert row.grad[0].tolist() == pytest.approx([-0.5, 0.5])


def test_lovasz_matches_the_definition_row_by_row():
    torch.manual_seed(0)
    logits = torch.randn(6, 9) * 2
    targets = (torch.rand(6, 9) > 0.5).long()
    targets[0] = 0  # a row without positives
    expected = [reference_lovasz(x.tolist(), y.tolist()) for x, y in zip(logits, targets)]
    assert lovasz_hinge(logits, targets).tolist() == pytest.approx(expected, rel=1e-5)


def test_lovasz_ignored_pixels_are_as_if_deleted():
    torch.manual_seed(1)
    logits, targets = torch.randn(2, 10), (torch.rand(2, 10) > 0.5).long()
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[:, 3:6] = False
    kept = torch.cat([torch.arange(3), torch.arange(6, 10)])
    deleted = lovasz_hinge(logits[:, kept], targets[:, kept])
    assert lovasz_hinge(logits, targets, valid).tolist() == pytest.approx(deleted.tolist(), rel=1e-6)
    scrambled, flipped = logits.clone(), targets.clone()
    scrambled[:, 3:6], flipped[:, 3:6] = 50.0, 1 - targets[:, 3:6]
    assert lovasz_hinge(scrambled, flipped, valid).tolist() == pytest.approx(deleted.tolist(), rel=1e-6)


def squares(size: int = 32) -> torch.Tensor:
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, 2:8, 2:8], labels[0, 4:10, 18:24], labels[0, 18:26, 8:16] = 1, 2, 3
    return labels


def grid(h: int, w: int) -> torch.Tensor:
    return add_positions(torch.zeros(1, 2, h, w), S)


def perfect(labels: torch.Tensor, n_sigma: int, radius: float = 0.5) -> torch.Tensor:
    """Every instance pixel at its centre, phi = 0.5 at `radius` pixels, seeds +-20 matching phi."""
    positions = grid(*labels.shape[1:])
    spatial = positions.clone()
    for i in labels.unique().tolist():
        if i > 0:
            inside = labels[0] == i
            spatial[0, :, inside] = positions[0, :, inside].mean(dim=1, keepdim=True)
    sigma = math.log(math.log(2) / (radius / S) ** 2) / 10
    seed = torch.where(labels > 0, 20.0, -20.0).unsqueeze(1)
    return torch.cat([spatial, torch.full((1, n_sigma, *labels.shape[1:]), sigma), seed], dim=1)


def output(embedding: torch.Tensor) -> SegOutput:
    b, _, h, w = embedding.shape
    return SegOutput(torch.zeros(b, 2, h, w), embedding, torch.full((b, 1), 0.1))


@pytest.mark.parametrize("n_sigma", [1, 2])
def test_a_perfect_output_scores_zero_and_misplaced_offsets_do_not(n_sigma):
    labels = squares()
    embedding = perfect(labels, n_sigma)
    loss = SpatialEmbeddingLoss(20, S)
    terms = loss(output(embedding), labels)
    assert terms["instance"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["seed"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["smooth"].item() == pytest.approx(0.0, abs=1e-10)
    no_offsets = embedding.clone()
    no_offsets[:, :2] = grid(32, 32)  # every pixel points at itself
    assert loss(output(no_offsets), labels)["instance"].item() > 0.5


def test_smooth_is_the_variance_of_sigma_within_each_instance():
    labels = squares()
    embedding = perfect(labels, 2)
    embedding[0, 2:4][:, labels[0] == 2] = 0.3  # constant: 0
    embedding[0, 2:4, 18:22, 8:16] = 0.1  # instance 3: half 0.1, half 0.5 -> mean 0.3, deviation 0.2
    embedding[0, 2:4, 22:26, 8:16] = 0.5
    terms = SpatialEmbeddingLoss(20, S)(output(embedding), labels)
    assert terms["smooth"].item() == pytest.approx(0.2 ** 2 / 3, rel=1e-5)  # averaged over 3 instances


def test_gradients_reach_every_channel_and_the_total_is_the_weighted_sum():
    torch.manual_seed(0)
    labels = squares()
    embedding = (perfect(labels, 2) + 0.1 * torch.randn(1, 5, 32, 32)).requires_grad_()
    loss = SpatialEmbeddingLoss(20, S, weights={"smooth": 3.0, "dice": 0.0})
    terms = loss(output(embedding), labels)
    terms["loss"].backward()
    assert (embedding.grad.abs().sum(dim=(0, 2, 3)) > 0).all()
    keys = {"instance": 1.0, "smooth": 3.0, "seed": 1.0, "ce": 1.0, "dice": 0.0, "count": 1.0}
    assert terms["loss"].item() == pytest.approx(sum(w * terms[k].item() for k, w in keys.items()), rel=1e-6)


def test_unknown_weights_and_bad_layouts_are_errors():
    with pytest.raises(ValueError, match="unknown"):
        SpatialEmbeddingLoss(20, S, weights={"variance": 1.0})
    with pytest.raises(ValueError, match="do not match"):
        SpatialEmbeddingLoss(20, S)(output(torch.zeros(1, 6, 8, 8)), torch.zeros(1, 8, 8, dtype=torch.long))
    assert set(SPATIAL_WEIGHTS) == {"instance", "smooth", "seed", "cross_entropy", "dice", "count"}


def test_semantic_and_count_terms_are_the_multitask_ones():
    torch.manual_seed(0)
    labels = squares().repeat(2, 1, 1)
    labels[1, :5] = -1
    out = SegOutput(torch.randn(2, 2, 32, 32), torch.randn(2, 5, 32, 32), torch.rand(2, 1))
    spatial, multitask = SpatialEmbeddingLoss(2, S)(out, labels), MultiTaskLoss(2)(out, labels)
    for key in ("ce", "dice", "count"):
        assert spatial[key].item() == multitask[key].item()


def test_ignored_pixels_change_no_term():
    torch.manual_seed(0)
    labels = squares()
    labels[0, 28:, :] = -1
    labels[0, 5, 5] = -1  # inside instance 1 too
    out = SegOutput(torch.randn(1, 2, 32, 32), torch.randn(1, 5, 32, 32) * 0.3 + torch.cat(
        [grid(32, 32), torch.zeros(1, 3, 32, 32)], dim=1), torch.rand(1, 1))
    ignored = labels == -1
    changed = SegOutput(torch.where(ignored, 9.0, out.semantic), torch.where(ignored, -7.0, out.embedding), out.count)
    loss = SpatialEmbeddingLoss(20, S)
    before, after = loss(out, labels), loss(changed, labels)
    assert {k: v.item() for k, v in after.items()} == pytest.approx({k: v.item() for k, v in before.items()}, rel=1e-6)


def test_seeds_of_instances_left_out_of_the_sample_are_excluded():
    labels = squares()
    labels[0, 18:26, 8:16] = 0
    labels[0, 20:26, 8:14] = 3  # three 6 x 6 instances
    embedding = perfect(labels, 1)
    embedding[:, -1][labels > 0] = -20.0  # seed 0 where phi = 1: error 1 per scored pixel
    torch.manual_seed(0)
    sampled = SpatialEmbeddingLoss(20, S, foreground_weight=2.0, instance_sample=1)(output(embedding), labels)
    every = SpatialEmbeddingLoss(20, S, foreground_weight=2.0)(output(embedding), labels)
    assert sampled["seed"].item() == pytest.approx(2.0 * 36 / 1024, rel=1e-5)
    assert every["seed"].item() == pytest.approx(2.0 * 3 * 36 / 1024, rel=1e-5)


def test_no_instances_and_single_pixel_instances_are_finite_and_differentiable():
    torch.manual_seed(0)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[1, 3, 4] = 1  # one pixel
    embedding = torch.randn(2, 4, 16, 16, requires_grad=True)
    loss = SpatialEmbeddingLoss(20, S)
    empty = loss(output(embedding[:1]), labels[:1])
    assert empty["instance"].item() == 0.0 and empty["smooth"].item() == 0.0
    empty["loss"].backward()
    assert torch.isfinite(embedding.grad).all()
    terms = loss(output(embedding), labels)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert torch.isfinite(embedding.grad).all()


def test_autocast_outputs_are_scored_in_float32():
    labels = squares()
    embedding = perfect(labels, 2) + 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = SpatialEmbeddingLoss(20, S)(output(embedding.bfloat16()), labels)
    full = SpatialEmbeddingLoss(20, S)(output(embedding.bfloat16().float()), labels)
    assert all(low[k].dtype == torch.float32 for k in low)
    assert {k: v.item() for k, v in low.items()} == pytest.approx({k: v.item() for k, v in full.items()}, rel=1e-6)


def test_a_learnable_output_overfits_three_squares():
    torch.manual_seed(0)
    labels = squares()
    positions = torch.cat([grid(32, 32), torch.zeros(1, 3, 32, 32)], dim=1)
    raw = torch.zeros(1, 5, 32, 32, requires_grad=True)
    optimiser = torch.optim.Adam([raw], lr=0.05)
    loss = SpatialEmbeddingLoss(20, S)
    history = []
    for _ in range(150):
        terms = loss(output(raw + positions), labels)
        optimiser.zero_grad()
        terms["loss"].backward()
        optimiser.step()
        history.append(terms["instance"].item())
    assert history[0] > 0.8 and history[-1] < 0.2


def test_lovasz_top_errors_exact_when_the_tail_is_zero_and_bounded_by_it_otherwise():
    generator = torch.Generator().manual_seed(3)
    targets = torch.rand(6, 400, generator=generator) < 0.2
    logits = torch.where(targets, 1.0, -1.0) * 1.5  # every error <= 0 ...
    logits[:, :50] = torch.randn(6, 50, generator=generator)  # ... but for 50 pixels per row
    exact = lovasz_hinge(logits, targets)
    assert lovasz_hinge(logits, targets, top=60).tolist() == pytest.approx(exact.tolist(), rel=1e-6)
    noisy = torch.randn(6, 400, generator=generator)
    errors = torch.where(targets, -noisy, noisy) + 1
    smallest_kept = errors.topk(100, dim=1).values[:, -1].clamp_min(0)
    gap = lovasz_hinge(noisy, targets) - lovasz_hinge(noisy, targets, top=100)
    assert (gap >= -1e-6).all() and (gap <= smallest_kept + 1e-6).all()
