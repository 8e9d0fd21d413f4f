import pytest
import torch

from instseg.models.interfaces import SegOutput
from instseg.train.config import LossWeights
from instseg.train.losses import MultiTaskLoss, discriminative_loss, instance_counts, instance_dice_loss


def emb(values):
    """[[ (x, y) per pixel ]] rows -> 1 x 2 x H x W embedding."""
    return torch.tensor(values, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)


ONE = (emb([[[0, 0], [0, 0]], [[2, 0], [2, 0]]]), torch.tensor([[[1, 1], [1, 1]]]))
TWO = (emb([[[0, 0], [0, 0]], [[1, 0], [1, 0]]]), torch.tensor([[[1, 1], [2, 2]]]))
EMPTY = (emb([[[5, 5], [1, 1]], [[2, 2], [3, 3]]]), torch.zeros(1, 2, 2, dtype=torch.long))


def test_one_instance_by_hand():
    # mean (1, 0); every pixel at distance 1 -> (1 - 0.5)^2 = 0.25; no pairs; ||mu|| = 1.
    t = discriminative_loss(*ONE)
    assert t.variance.item() == pytest.approx(0.25)
    assert t.distance.item() == 0.0
    assert t.regularization.item() == pytest.approx(1.0)
    assert t.total.item() == pytest.approx(0.25 + 0.001)


def test_two_instances_by_hand():
    # tight clusters at (0,0) and (1,0): variance 0; ||mu_a - mu_b|| = 1 -> (3 - 1)^2 = 4 on both
    # ordered pairs, averaged -> 4; regulariser (0 + 1) / 2.
    t = discriminative_loss(*TWO)
    assert t.variance.item() == pytest.approx(0.0, abs=1e-6)
    assert t.distance.item() == pytest.approx(4.0)
    assert t.regularization.item() == pytest.approx(0.5)
    assert t.total.item() == pytest.approx(4.0005)


def test_ids_need_not_be_contiguous():
    e, labels = TWO
    relabelled = torch.where(labels == 1, 3, 7)
    assert discriminative_loss(e, relabelled).total.item() == pytest.approx(discriminative_loss(e, labels).total.item())


def test_all_background_is_zero_and_differentiable():
    e, labels = EMPTY
    e.requires_grad_(True)
    t = discriminative_loss(e, labels)
    assert t.total.item() == 0.0
    t.total.backward()
    assert e.grad is not None and torch.all(e.grad == 0)


def test_batch_averages_only_images_with_instances():
    e = torch.cat([ONE[0], EMPTY[0]])
    labels = torch.cat([ONE[1], EMPTY[1]])
    assert discriminative_loss(e, labels).total.item() == pytest.approx(0.251)


def test_batch_of_two_images_is_vectorised_mean():
    e = torch.cat([ONE[0], TWO[0]])
    labels = torch.cat([ONE[1], TWO[1]])
    t = discriminative_loss(e, labels)
    assert t.variance.item() == pytest.approx(0.125)
    assert t.distance.item() == pytest.approx(2.0)
    assert t.regularization.item() == pytest.approx(0.75)


def test_identical_centers_give_finite_gradients():
    e = torch.zeros(1, 4, 8, 8, requires_grad=True)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4], labels[0, 4:] = 1, 2
    t = discriminative_loss(e, labels)
    assert t.distance.item() == pytest.approx(9.0)  # (2 * 1.5 - 0)^2
    t.total.backward()
    assert torch.isfinite(e.grad).all()


def test_gradients_pull_pixels_towards_their_center():
    e, labels = ONE
    e = e.clone().requires_grad_(True)
    discriminative_loss(e, labels).variance.backward()
    # pixel (0,0) sits at x=0 left of the mean x=1: descending the gradient moves it right.
    assert e.grad[0, 0, 0, 0] < 0 and e.grad[0, 0, 1, 0] > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        discriminative_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_instance_counts():
    labels = torch.tensor([[[0, 3], [3, 9]], [[0, 0], [0, 0]]])
    assert instance_counts(labels).tolist() == [2, 0]


def test_multitask_loss_terms_and_count_clipping():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :4, :4], labels[0, 4:, 4:] = 1, 2
    out = SegOutput(torch.zeros(2, 2, 8, 8, requires_grad=True), torch.zeros(2, 4, 8, 8, requires_grad=True),
                    torch.full((2, 1), 0.5, requires_grad=True))
    terms = MultiTaskLoss(max_instances=1)(out, labels)
    # counts 2 (clipped to 1) and 0 -> targets 1.0, 0.0; prediction 0.5 -> MSE 0.25
    assert terms["count"].item() == pytest.approx(0.25)
    assert terms["ce"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert set(terms) >= {"loss", "disc", "var", "dist", "reg", "ce", "dice", "count"}
    terms["loss"].backward()
    assert all(torch.isfinite(t.grad).all() for t in out)


def test_instance_dice_by_hand():
    # TWO: clusters at (0, 0) and (1, 0), one unit apart. sigma^2 = 0.25 / (2 ln 2): a pixel one
    # unit from a mean scores exp(-1 / (2 sigma^2)) = 2^-4 = 1/16, its own pixels 1.
    # Per instance: inter 2, sum soft^2 = 2 + 2/256, |mask| 2 -> Dice 4 / (4 + 2/256).
    expected = 1 - 4 / (4 + 2 / 256)
    assert instance_dice_loss(*TWO).item() == pytest.approx(expected, rel=1e-5)
    far = emb([[[0, 0], [0, 0]], [[9, 0], [9, 0]]])
    assert instance_dice_loss(far, TWO[1]).item() == pytest.approx(0.0, abs=1e-6)  # separated: perfect masks


def test_instance_dice_ignores_ignored_pixels_and_empty_images():
    e, labels = TWO
    ignored = labels.clone()
    ignored[0, 1, 0] = -1  # one pixel of instance 2 is IGNORE: in no mask, in no soft mask
    loss = instance_dice_loss(e, ignored)
    assert torch.isfinite(loss) and loss.item() != instance_dice_loss(e, labels).item()
    empty = instance_dice_loss(EMPTY[0].requires_grad_(), EMPTY[1])
    assert empty.item() == 0.0
    empty.backward()


def test_instance_dice_gradient_separates_touching_instances():
    e = TWO[0].clone().requires_grad_()
    instance_dice_loss(e, TWO[1]).backward()
    # instance 1 sits at x = 0, instance 2 at x = 1: descending the gradient pushes them apart
    assert (e.grad[0, 0, 0] > 0).all() and (e.grad[0, 0, 1] < 0).all()


def test_the_instance_term_joins_the_total_only_when_weighted():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4], labels[0, 4:] = 1, 2
    out = SegOutput(torch.zeros(1, 2, 8, 8), torch.rand(1, 4, 8, 8), torch.full((1, 1), 0.1))
    plain = MultiTaskLoss(max_instances=20)(out, labels)
    weighted = MultiTaskLoss(max_instances=20, weights=LossWeights(instance=2.0))(out, labels)
    assert "instance" not in plain and 0 < weighted["instance"].item() < 1
    assert weighted["loss"].item() == pytest.approx(plain["loss"].item() + 2 * weighted["instance"].item())


def test_compacting_renumbers_each_image_and_keeps_background_and_ignore():
    from instseg.train.losses import compact_labels

    labels = torch.tensor([[[0, 5, 5, 900]], [[-1, 7, 0, 3]]])
    assert compact_labels(labels).tolist() == [[[0, 1, 1, 2]], [[-1, 2, 0, 1]]]


def test_losses_do_not_depend_on_which_ids_label_the_instances():
    torch.manual_seed(0)
    output = SegOutput(torch.randn(2, 2, 8, 8), torch.randn(2, 4, 8, 8, requires_grad=True), torch.rand(2, 1))
    small = torch.randint(0, 4, (2, 8, 8))
    large = torch.where(small > 0, small * 1000 + 7, small)  # the same instances, ids up to 3007
    loss = MultiTaskLoss(20, LossWeights(instance=1.0))
    assert {k: v.item() for k, v in loss(output, large).items()} == \
        pytest.approx({k: v.item() for k, v in loss(output, small).items()}, rel=1e-6)


def test_the_instance_term_samples_at_most_its_share_of_a_crowded_image():
    from instseg.train.losses import compact_labels, sample_instances

    torch.manual_seed(0)
    labels = torch.arange(1, 401).view(1, 20, 20).repeat(2, 1, 1)  # 400 one-pixel instances per image
    labels[1, :10] = 0  # ... and 200 in the second
    labels = compact_labels(labels)
    sampled = sample_instances(labels, 64)
    for image in range(2):
        kept = sampled[image].unique()
        assert kept.tolist() == list(range(65))  # 64 instances renumbered 1..64, and background
        originals = labels[image][sampled[image] > 0]
        assert originals.unique().numel() == 64  # each kept id is one whole original instance
    assert not torch.equal(sampled[0], sampled[1])  # drawn per image


def test_a_crowded_crop_costs_its_instances_not_its_ids():
    """2000 instances in one 64 x 64 crop: pull / push are B x K x K, the instance term samples."""
    embedding = torch.randn(1, 8, 64, 64, requires_grad=True)
    labels = (torch.arange(64 * 64).view(1, 64, 64) % 2000) + 1
    output = SegOutput(torch.randn(1, 2, 64, 64), embedding, torch.rand(1, 1))
    terms = MultiTaskLoss(20, LossWeights(instance=1.0))(output, labels)
    terms["loss"].backward()
    assert torch.isfinite(embedding.grad).all()


def test_mean_distances_agree_between_the_exact_and_the_compact_form(monkeypatch):
    import instseg.train.losses as losses

    torch.manual_seed(0)
    embedding = torch.randn(2, 4, 16, 16)
    labels = torch.randint(0, 12, (2, 16, 16))
    exact = discriminative_loss(embedding, labels)
    monkeypatch.setattr(losses, "DIFFERENCE_ELEMENTS", 0)  # the B x K x K form crowded crops take
    compact = discriminative_loss(embedding, labels)
    assert compact.distance.item() == pytest.approx(exact.distance.item(), rel=1e-5)


def test_instance_dice_scores_instance_pixels_only_and_pads_images_apart():
    e, labels = TWO
    wider = torch.zeros(1, 2, 2, 3)  # column 2: background pixels at (0, 0), instance 1's mean
    wider[..., :2] = e
    with_background = torch.cat([labels, torch.zeros(1, 2, 1, dtype=torch.long)], dim=2)
    assert instance_dice_loss(wider, with_background).item() == pytest.approx(instance_dice_loss(e, labels).item())
    # a batch pads the smaller image's pixels: each image scores as it does alone
    small_labels = torch.tensor([[[1, 0, 0], [0, 0, 0]]])
    small = torch.rand(1, 2, 2, 3)
    batch = instance_dice_loss(torch.cat([wider, small]), torch.cat([with_background, small_labels]))
    alone = (2 * instance_dice_loss(wider, with_background) + instance_dice_loss(small, small_labels)) / 3
    assert batch.item() == pytest.approx(alone.item(), rel=1e-6)  # the mean over the batch's 3 instances
