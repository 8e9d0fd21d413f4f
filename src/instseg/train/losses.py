"""Losses: the discriminative loss (De Brabandere et al. 2017), an instance-level Dice term
(SPOCO, Wolny et al. 2022), dice + CE, count MSE.

All targets come from one instance label map per image (int64, 0 = background, IGNORE = -1
for pixels no term sees, e.g. COCO crowd regions), never from zero-padded one-hot stacks; ids
are renumbered 1..n per image first (`compact_labels`), so costs follow the instances a crop
holds, not the largest id. Cluster statistics are computed with `index_add_` over global
(image, instance) ids, so memory is O(B*H*W*D + B*K^2) and there is no Python loop over images
or instances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.metrics.scores import IGNORE
from instseg.models.interfaces import SegOutput
from instseg.train.config import LossWeights

_EPS = 1e-12


@dataclass(frozen=True)
class DiscriminativeTerms:
    """Batch means over images that contain at least one instance."""

    total: Tensor
    variance: Tensor
    distance: Tensor
    regularization: Tensor


def instance_counts(labels: Tensor) -> Tensor:
    """Number of distinct non-zero ids per image (ids need not be contiguous): shape B."""
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    k = int(flat.max().clamp_min(0).item()) + 1 if flat.numel() else 1
    present = torch.zeros(batch, k, dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat.clamp_min(0), True)
    return present[:, 1:].sum(dim=1)


def _safe_norm(x: Tensor, dim: int) -> Tensor:
    # sqrt(max(|x|^2, eps)): the gradient of |x| at 0 is undefined; here it is 0.
    return x.pow(2).sum(dim=dim).clamp_min(_EPS).sqrt()


def compact_labels(labels: Tensor) -> Tensor:
    """Renumber each image's instance ids 1..n in order (0 and IGNORE stay): a crop of a crowded
    image holds a few of its ids, and every term's memory grows with the largest id, not the count."""
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    k = int(flat.max().clamp_min(0).item()) + 1 if flat.numel() else 1
    present = torch.zeros(batch, k, dtype=torch.long, device=labels.device)
    present.scatter_(1, flat.clamp_min(0), 1)
    present[:, 0] = 0
    rank = present.cumsum(dim=1)  # image b's id i -> how many ids <= i it has
    compact = torch.where(flat > 0, rank.gather(1, flat.clamp_min(0)), flat)
    return compact.view_as(labels)


DIFFERENCE_ELEMENTS = 2**24  # B x K x K x D mean differences up to this many are formed exactly


def _pair_distances(centers: Tensor) -> Tensor:
    """B x K x K distances between cluster means. From their differences while those are small
    (exact: two processes of a DDP run agree with one to rounding), from ||a||^2 + ||b||^2 - 2 a.b
    beyond (memory B x K x K: a crowded crop's K x K x D differences took GBs); sqrt(max(., eps))
    keeps the gradient at 0 finite either way."""
    batch, k, dim = centers.shape
    if batch * k * k * dim <= DIFFERENCE_ELEMENTS:
        return _safe_norm(centers.unsqueeze(2) - centers.unsqueeze(1), dim=3)
    squared = centers.pow(2).sum(dim=2)
    gram = centers @ centers.transpose(1, 2)
    return (squared.unsqueeze(2) + squared.unsqueeze(1) - 2 * gram).clamp_min(_EPS).sqrt()


def discriminative_loss(
    embedding: Tensor,
    labels: Tensor,
    *,
    delta_v: float = 0.5,
    delta_d: float = 1.5,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.001,
) -> DiscriminativeTerms:
    """The paper's eq. 1-4 on B x D x H x W embeddings and B x H x W instance label maps.

    variance: per cluster the mean of [||mu_c - x_i|| - delta_v]_+^2, averaged over clusters;
    distance: [2 delta_d - ||mu_a - mu_b||]_+^2 averaged over ordered pairs a != b (0 if C <= 1);
    regularization: mean ||mu_c|| over clusters. Each term is averaged over the images that
    have at least one instance; a batch with none gives zeros that still carry a gradient.
    """
    if embedding.dim() != 4 or labels.dim() != 3 or embedding.shape[0] != labels.shape[0] \
            or embedding.shape[2:] != labels.shape[1:]:
        raise ValueError(f"embedding {tuple(embedding.shape)} and labels {tuple(labels.shape)} do not match")
    batch, dim = embedding.shape[:2]
    embedding = embedding.float()
    labels = labels.long()
    k = int(labels.max().clamp_min(0).item()) + 1 if labels.numel() else 1

    # Global cluster id per foreground pixel: image * k + instance id.
    pixels = embedding.permute(0, 2, 3, 1).reshape(-1, dim)
    gid = (labels + k * torch.arange(batch, device=labels.device).view(-1, 1, 1)).reshape(-1)
    fg = labels.reshape(-1) > 0
    x, g = pixels[fg], gid[fg]

    n = torch.zeros(batch * k, device=embedding.device).index_add_(0, g, torch.ones_like(g, dtype=torch.float32))
    present = (n > 0).view(batch, k)
    means = torch.zeros(batch * k, dim, device=embedding.device).index_add_(0, g, x) / n.clamp_min(1).unsqueeze(1)

    pull = (_safe_norm(x - means[g], dim=1) - delta_v).clamp_min(0).pow(2)
    var_per_cluster = torch.zeros(batch * k, device=embedding.device).index_add_(0, g, pull) / n.clamp_min(1)
    clusters = present.sum(dim=1).float()
    variance = var_per_cluster.view(batch, k).sum(dim=1) / clusters.clamp_min(1)

    centers = means.view(batch, k, dim)
    pair_dist = _pair_distances(centers)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=embedding.device)
    pairs = present.unsqueeze(2) & present.unsqueeze(1) & off_diagonal
    push = (2 * delta_d - pair_dist).clamp_min(0).pow(2) * pairs
    distance = push.sum(dim=(1, 2)) / (clusters * (clusters - 1)).clamp_min(1)

    regularization = (_safe_norm(centers, dim=2) * present).sum(dim=1) / clusters.clamp_min(1)

    has_instances = clusters > 0
    n_images = has_instances.sum().clamp_min(1)

    def batch_mean(per_image: Tensor) -> Tensor:
        return (per_image * has_instances).sum() / n_images

    variance, distance, regularization = batch_mean(variance), batch_mean(distance), batch_mean(regularization)
    if not bool(has_instances.any()):  # keep the graph connected so backward() still works
        zero = embedding.sum() * 0.0
        variance, distance, regularization = zero, zero, zero
    total = alpha * variance + beta * distance + gamma * regularization
    return DiscriminativeTerms(total, variance, distance, regularization)


INSTANCE_SAMPLE = 64  # instances per image the instance-level term scores per step (its memory is B x HW x this)


def sample_instances(labels: Tensor, count: int) -> Tensor:
    """`labels` with at most `count` instances per image kept, drawn at random (torch's generator,
    so a seeded run repeats), renumbered 1..count; the others become background. Labels whose ids
    all lie within `count` come back as they are."""
    if int(labels.max().clamp_min(0).item()) <= count:
        return labels
    batch = labels.shape[0]
    flat = compact_labels(labels).reshape(batch, -1)
    k = int(flat.max().item()) + 1
    if k - 1 <= count:
        return flat.view_as(labels)
    ids = torch.arange(k, device=labels.device).expand(batch, k)
    n = flat.max(dim=1, keepdim=True).values.clamp_min(0)  # compacted: image b holds ids 1..n_b
    keys = torch.where(ids <= n, torch.rand(batch, k, device=labels.device), torch.full_like(ids, 2, dtype=torch.float))
    keys[:, 0] = -1.0  # background keeps position 0
    position = torch.empty_like(ids).scatter_(1, keys.argsort(dim=1), ids.contiguous())
    kept = torch.where(position <= count, position, torch.zeros_like(position))
    return torch.where(flat > 0, kept.gather(1, flat.clamp_min(0)), flat).view_as(labels)


def _foreground_pixels(embedding: Tensor, flat: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's instance pixels first, in raster order, padded to the batch's largest count:
    their B x P x D embeddings and B x P ids (0 in the padding)."""
    foreground = flat > 0
    counts = foreground.sum(dim=1, keepdim=True)
    order = torch.argsort((~foreground).to(torch.uint8), dim=1, stable=True)[:, :int(counts.max())]
    ids = flat.gather(1, order) * (torch.arange(order.shape[1], device=flat.device) < counts)
    pixels = embedding.flatten(2).gather(2, order.unsqueeze(1).expand(-1, embedding.shape[1], -1))
    return pixels.transpose(1, 2), ids


def instance_dice_loss(embedding: Tensor, labels: Tensor, *, delta_v: float = 0.5,
                       max_instances: int = INSTANCE_SAMPLE) -> Tensor:
    """1 - Dice between each instance's soft mask and its true mask, averaged over instances.

    The soft mask of instance c is exp(-||x_i - mu_c||^2 / (2 sigma^2)) over the instance pixels
    of its image, with sigma chosen so that a pixel at the pull margin `delta_v` from the mean
    scores 0.5 (SPOCO's kernel): unlike pull / push, which see pixels one by one, it scores the
    mask that clustering will cut, so stray pixels of a neighbour and missed pixels both count.
    Background is left out: clustering never sees it (the semantic head removes it first), and
    CVPPP plants fill a median 14% of the frame, so the term costs a fraction of scoring every
    pixel. Distances come from one batched matrix product (||x||^2 + ||mu||^2 - 2 x.mu): memory
    B x K x P (P: the largest image's instance pixels), no loop over instances; K is at most
    `max_instances` (a random sample per image, `sample_instances`), so crowded images cost what
    a rosette does. IGNORE pixels belong to no mask and are left out.
    """
    batch = embedding.shape[0]
    labels = sample_instances(labels.long(), max_instances)
    flat = labels.reshape(batch, -1)
    k = int(flat.max().clamp_min(0).item()) if flat.numel() else 0
    if k == 0:
        return embedding.sum() * 0.0
    pixels, ids = _foreground_pixels(embedding.float(), flat)  # B x P x D, B x P
    masks = torch.zeros(*ids.shape, k + 1, device=embedding.device).scatter_(2, ids.unsqueeze(2), 1.0)[..., 1:]
    sizes = masks.sum(dim=1)  # B x K
    means = masks.transpose(1, 2) @ pixels / sizes.clamp_min(1).unsqueeze(2)  # B x K x D
    squared = (pixels.pow(2).sum(2, keepdim=True) + means.pow(2).sum(2).unsqueeze(1)
               - 2 * pixels @ means.transpose(1, 2)).clamp_min(0)  # B x P x K
    sigma2 = delta_v ** 2 / (2 * math.log(2))  # exp(-delta_v^2 / (2 sigma^2)) = 0.5
    soft = torch.exp(-squared / (2 * sigma2)) * (ids > 0).unsqueeze(2)
    inter = (soft * masks).sum(dim=1)
    dice = 2 * inter / (soft.pow(2).sum(dim=1) + sizes).clamp_min(_EPS)
    present = sizes > 0
    return ((1 - dice) * present).sum() / present.sum()


def soft_dice_loss(logits: Tensor, foreground: Tensor, valid: Tensor | None = None) -> Tensor:
    """1 - Dice between the foreground probability and the foreground mask, per image, averaged
    (over the `valid` pixels only, when given)."""
    prob = logits.float().softmax(dim=1)[:, 1]
    target = foreground.float()
    if valid is not None:
        prob, target = prob * valid, target * valid
    inter = (prob * target).sum(dim=(1, 2))
    denom = prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
    return (1 - (2 * inter + 1) / (denom + 1)).mean()


class SemanticTerms(NamedTuple):
    """The terms every objective shares, whatever its embedding loss."""

    cross_entropy: Tensor
    dice: Tensor
    count: Tensor


def semantic_terms(output: SegOutput, labels: Tensor, max_instances: int) -> SemanticTerms:
    """Foreground cross-entropy and soft Dice over the non-IGNORE pixels, and the MSE of the
    normalised count (clipped at `max_instances`), from B x H x W int64 label maps; compact the
    labels first (`compact_labels`): counting costs memory in the largest id."""
    foreground = labels > 0
    valid = labels != IGNORE
    ce_pixels = F.cross_entropy(output.semantic.float(), foreground.long(), reduction="none")
    ce = (ce_pixels * valid).sum() / valid.sum().clamp_min(1)
    dice = soft_dice_loss(output.semantic, foreground, valid)
    target = instance_counts(labels).float().clamp_max(max_instances) / max_instances
    count = F.mse_loss(output.count.float().view(-1), target)
    return SemanticTerms(ce, dice, count)


class MultiTaskLoss(nn.Module):
    """Weighted sum of discriminative (embedding), CE + dice (semantic) and MSE (count) losses."""

    def __init__(
        self,
        max_instances: int,
        weights: LossWeights = LossWeights(),
        delta_v: float = 0.5,
        delta_d: float = 1.5,
    ) -> None:
        super().__init__()
        self.max_instances = max_instances
        self.weights = weights
        self.delta_v = delta_v
        self.delta_d = delta_d

    def forward(self, output: SegOutput, labels: Tensor) -> dict[str, Tensor]:
        labels = compact_labels(labels.long())
        disc = discriminative_loss(output.embedding, labels, delta_v=self.delta_v, delta_d=self.delta_d)
        ce, dice, count = semantic_terms(output, labels, self.max_instances)
        w = self.weights
        total = w.discriminative * disc.total + w.cross_entropy * ce + w.dice * dice + w.count * count
        terms = {}
        if w.instance:
            terms["instance"] = instance_dice_loss(output.embedding, labels, delta_v=self.delta_v)
            total = total + w.instance * terms["instance"]
        return {
            "loss": total,
            "disc": disc.total,
            "var": disc.variance,
            "dist": disc.distance,
            "reg": disc.regularization,
            "ce": ce,
            "dice": dice,
            "count": count,
            **terms,
        }
