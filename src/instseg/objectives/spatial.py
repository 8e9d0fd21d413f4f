"""The spatial-embedding objective (Neven et al., CVPR 2019; EmbedSeg, Lalit et al. 2021).

Each pixel points at its object's centre; each object learns its own bandwidth, so clustering
needs no count and no margin: a pixel belongs to an object where its probability
phi = exp(-sum_a s_a (e_a - C_a)^2) exceeds 0.5. The embedding has D = 2 + n_sigma + 1
channels: the absolute spatial embedding (row, col) / S plus learned offset (the model adds the
grid), n_sigma in {1, 2} raw sigmas with s = exp(10 sigma), and the seed logit.

Targets come from one int64 label map per image (0 background, IGNORE = -1 seen by no term), as
in `instseg.train.losses`; every term is vectorised over images and instances.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.metrics.scores import IGNORE
from instseg.models.interfaces import SegOutput, add_positions
from instseg.instances.seeds import EXPONENT_LIMIT, SIGMA_SCALE  # s = exp(10 sigma), exp(80) finite in float32
from instseg.train.losses import compact_labels, sample_instances, semantic_terms

# Neven et al. 2019's weights (instance 1, sigma smoothness 10, seed 1), plus the semantic and count heads'
SPATIAL_WEIGHTS = {"instance": 1.0, "smooth": 10.0, "seed": 1.0, "cross_entropy": 1.0, "dice": 1.0, "count": 1.0}
_TERM_OF_WEIGHT = {"instance": "instance", "smooth": "smooth", "seed": "seed",
                   "cross_entropy": "ce", "dice": "dice", "count": "count"}


LOVASZ_TOP = 4096  # errors per instance the hinge sorts (the rest weigh at most the smallest of them)


def _jaccard_gradient(sorted_targets: Tensor, positives: Tensor) -> Tensor:
    """The Lovasz extension's weights: the Jaccard loss increments along each row's error order.
    After n pixels with f positives among them, 1 - |inter| / |union| = n / (positives + n - f);
    the union is never 0 (with no positive, every error counts as a false positive)."""
    seen = torch.arange(1, sorted_targets.shape[1] + 1, device=sorted_targets.device, dtype=torch.float32)
    jaccard = (seen - sorted_targets.cumsum(dim=1)).add_(positives).reciprocal_().mul_(seen)
    return torch.diff(jaccard, dim=1, prepend=jaccard.new_zeros(jaccard.shape[0], 1))


def lovasz_hinge(logits: Tensor, targets: Tensor, valid: Tensor | None = None, top: int | None = None) -> Tensor:
    """Lovasz hinge (Berman et al. 2018) of N binary problems at once: logits and 0/1 targets
    N x P, `valid` N x P (False: the pixel is left out of its row); returns the N row losses.

    One sort per row orders the hinge errors 1 - logit * (2 target - 1); a cumulative sum gives
    the Jaccard increments. Left-out pixels sort last with error -inf, where relu makes them
    weightless. `top`: only each row's `top` largest errors are ordered (`topk`, 6x cheaper than
    sorting 65k pixels): their terms are exact, and the dropped tail, whose Jaccard increments sum
    to at most 1, weighs at most the smallest error kept (0 once the model separates the
    instance). Memory: about 7 N x P float32 / int64 tensors."""
    logits = logits.float()
    positive = targets.bool() if valid is None else targets.bool() & valid
    errors = torch.where(positive, -logits, logits).add_(1)
    if valid is not None:
        errors.masked_fill_(~valid, float("-inf"))
    if top is not None and top < errors.shape[1]:
        sorted_errors, order = errors.topk(top, dim=1)
    else:
        sorted_errors, order = errors.sort(dim=1, descending=True)
    positives = positive.sum(dim=1, keepdim=True).float()
    weights = _jaccard_gradient(positive.gather(1, order).float(), positives)
    return (F.relu(sorted_errors) * weights).sum(dim=1)


class _InstanceStats(NamedTuple):
    """Per scored instance (B x C x K, instance k is id k + 1), from the label map."""

    centres: Tensor  # B x 2 x K mean pixel coordinate (r / S, c / S)
    sigmas: Tensor  # B x n_sigma x K mean raw sigma
    smooth: Tensor  # B x K mean squared deviation of the pixels' sigma from that mean
    present: Tensor  # B x K bool


def _bucket_sums(values: Tensor, index: Tensor, k: int) -> Tensor:
    """B x C x HW values summed per id 1..k of `index` (B x HW; ids <= 0 are dropped): B x C x K."""
    sums = values.new_zeros(values.shape[0], values.shape[1], k + 1)
    return sums.scatter_add_(2, index.clamp_min(0).unsqueeze(1).expand_as(values), values)[..., 1:]


def _instance_statistics(embedding: Tensor, scored: Tensor, k: int, scale: float) -> _InstanceStats:
    batch, _, h, w = embedding.shape
    coords = add_positions(embedding.new_zeros(1, 2, h, w), scale).flatten(2).expand(batch, -1, -1)
    sigma = embedding[:, 2:-1].flatten(2)
    sizes = _bucket_sums(torch.ones_like(coords[:, :1]), scored, k)
    centres = _bucket_sums(coords, scored, k) / sizes.clamp_min(1)
    sigmas = _bucket_sums(sigma, scored, k) / sizes.clamp_min(1)
    own = torch.cat([sigmas.new_zeros(batch, sigma.shape[1], 1), sigmas], dim=2)
    own = own.gather(2, scored.clamp_min(0).unsqueeze(1).expand_as(sigma)).detach()
    deviation = (sigma - own).pow(2).mean(dim=1, keepdim=True)
    smooth = _bucket_sums(deviation, scored, k) / sizes.clamp_min(1)
    return _InstanceStats(centres, sigmas, smooth[:, 0], sizes[:, 0] > 0)


WINDOW_MARGIN = 16  # pixels around each instance's box where the instance term looks for false positives


def _bandwidths(sigmas: Tensor) -> Tensor:
    """B x n_sigma x K raw sigmas -> B x 2 x K bandwidths s = exp(10 sigma) (one sigma: both axes)."""
    return torch.exp((SIGMA_SCALE * sigmas).clamp_max(EXPONENT_LIMIT)).expand(-1, 2, -1)


def _windows(scored: Tensor, k: int, height: int, width: int, margin: int = WINDOW_MARGIN) -> Tensor:
    """B x K x P flat pixel indices: per instance one window, its box grown by `margin` on every
    side, all windows of one size (the largest box's, within the image) so they stack. A pixel
    further from an instance than that is not scored by its instance term (its seed still is)."""
    batch = scored.shape[0]
    rows = torch.arange(height, device=scored.device).repeat_interleave(width).expand(batch, -1)
    cols = torch.arange(width, device=scored.device).repeat(height).expand(batch, -1)
    ids = scored.clamp_min(0)
    box = []
    for coords, reduce, fill in ((rows, "amin", height), (cols, "amin", width), (rows, "amax", -1), (cols, "amax", -1)):
        init = torch.full((batch, k + 1), fill, device=scored.device, dtype=torch.long)
        box.append(init.scatter_reduce(1, ids, coords, reduce, include_self=True)[:, 1:])
    top, left, bottom, right = box
    present = bottom >= 0
    side_h = min(height, int(((bottom - top + 1) * present).max().item()) + 2 * margin)
    side_w = min(width, int(((right - left + 1) * present).max().item()) + 2 * margin)
    r0 = ((top + bottom + 1 - side_h) // 2).clamp(0, height - side_h) * present
    c0 = ((left + right + 1 - side_w) // 2).clamp(0, width - side_w) * present
    offsets = (torch.arange(side_h, device=scored.device).view(-1, 1) * width
               + torch.arange(side_w, device=scored.device).view(1, -1)).view(1, 1, -1)
    return (r0 * width + c0).unsqueeze(2) + offsets


def _window_probabilities(spatial: Tensor, centres: Tensor, bandwidth: Tensor, windows: Tensor) -> Tensor:
    """phi of each window's pixels (spatial: B x 2 x HW) for its instance: B x K x P."""
    phi = 0.0
    for axis in range(2):
        values = spatial[:, axis].gather(1, windows.flatten(1)).view_as(windows)
        phi = phi + bandwidth[:, axis].unsqueeze(2) * (values - centres[:, axis].unsqueeze(2)).pow(2)
    return torch.exp(-phi)


def _own_probabilities(spatial: Tensor, centres: Tensor, bandwidth: Tensor, scored: Tensor) -> Tensor:
    """phi of each pixel for the instance it belongs to (0 where it is in none scored): B x HW."""
    index = (scored - 1).clamp_min(0).unsqueeze(1).expand(-1, 2, -1)
    own_centre, own_bandwidth = centres.gather(2, index), bandwidth.gather(2, index)
    phi = torch.exp(-(own_bandwidth * (spatial - own_centre).pow(2)).sum(dim=1))
    return torch.where(scored > 0, phi, torch.zeros_like(phi))


def _image_mean(per_instance: Tensor, present: Tensor) -> Tensor:
    """Mean over each image's instances, then over the images that have one (as
    `discriminative_loss`); zero, still on the graph, when none has."""
    n = present.sum(dim=1)
    per_image = (per_instance * present).sum(dim=1) / n.clamp_min(1)
    has = n > 0
    return (per_image * has).sum() / has.sum().clamp_min(1)


def _seed_loss(seed_logits: Tensor, own: Tensor, scored: Tensor, labels: Tensor, foreground_weight: float) -> Tensor:
    """Seeds regress phi of their own instance (`own`; 0 on background); pixels of instances left
    out of the sample are excluded. Per image: sum over pixels / valid pixels; mean over images."""
    in_scored = scored > 0
    target = own.detach()
    weight = torch.where(in_scored, foreground_weight, (labels == 0).float())
    error = weight * (torch.sigmoid(seed_logits) - target).pow(2)
    return (error.sum(dim=1) / (labels != IGNORE).sum(dim=1).clamp_min(1)).mean()


def _resolve_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    unknown = set(weights or {}) - set(SPATIAL_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown spatial loss weights {sorted(unknown)}; known: {sorted(SPATIAL_WEIGHTS)}")
    return {**SPATIAL_WEIGHTS, **{name: float(value) for name, value in (weights or {}).items()}}


class SpatialEmbeddingLoss(nn.Module):
    """Neven et al.'s loss plus the semantic and count terms every objective shares.

    Per image b and scored instance k (at most `instance_sample` per image, `sample_instances`):
    C_k is the mean pixel coordinate of k (from the label map), sigma_k the mean of its pixels'
    sigma; "instance" is the Lovasz hinge of 2 phi_k - 1 against k's mask over the valid pixels of
    k's window (its box plus WINDOW_MARGIN pixels: a neighbour's pixels and a too-wide bandwidth
    show there), "smooth" the variance of sigma within k (around the detached mean), both
    averaged over instances then over images with instances; "seed" regresses the seed score to
    phi of the pixel's own instance over the whole image (see `_seed_loss`). Math in float32
    whatever the autocast dtype. Memory: a dozen B x K x P tensors (P: the window's pixels, at
    most H x W). Windows made the loss 20x cheaper than scoring every pixel of the image for every
    instance (B = 8, K = 30, 256 x 256 nuclei: 0.09 s forward and backward on 2 cores, was 2 s).
    """

    def __init__(self, max_instances: int, position_scale: float, weights: Mapping[str, float] | None = None,
                 foreground_weight: float = 1.0, instance_sample: int = 32) -> None:
        super().__init__()
        if not position_scale > 0:
            raise ValueError(f"position_scale must be a positive number of pixels per unit, got {position_scale}")
        if instance_sample < 1:
            raise ValueError(f"instance_sample must be >= 1, got {instance_sample}")
        self.max_instances = max_instances
        self.position_scale = float(position_scale)
        self.weights = _resolve_weights(weights)
        self.foreground_weight = float(foreground_weight)
        self.instance_sample = instance_sample

    def forward(self, output: SegOutput, labels: Tensor) -> dict[str, Tensor]:
        labels = compact_labels(labels.long())
        embedding = output.embedding.float()
        if embedding.dim() != 4 or embedding.shape[1] not in (4, 5) or labels.dim() != 3 \
                or embedding.shape[0] != labels.shape[0] or embedding.shape[2:] != labels.shape[1:]:
            raise ValueError(f"spatial embedding {tuple(embedding.shape)} (B x 4|5 x H x W) and labels "
                             f"{tuple(labels.shape)} do not match")
        batch = embedding.shape[0]
        flat = labels.reshape(batch, -1)
        scored = sample_instances(labels, self.instance_sample).reshape(batch, -1)
        k = max(int(scored.max().item()), 1)
        stats = _instance_statistics(embedding, scored, k, self.position_scale)
        spatial, bandwidth = embedding[:, :2].flatten(2), _bandwidths(stats.sigmas)
        windows = _windows(scored, k, *labels.shape[1:])
        phi = _window_probabilities(spatial, stats.centres, bandwidth, windows)
        masks = scored.gather(1, windows.flatten(1)).view_as(windows) == torch.arange(
            1, k + 1, device=scored.device).view(1, k, 1)
        valid = (flat != IGNORE).gather(1, windows.flatten(1)).view_as(windows)
        rows = lovasz_hinge((2 * phi - 1).flatten(0, 1), masks.flatten(0, 1), valid.flatten(0, 1), top=LOVASZ_TOP)
        own = _own_probabilities(spatial, stats.centres, bandwidth, scored)
        ce, dice, count = semantic_terms(output, labels, self.max_instances)
        terms = {
            "instance": _image_mean(rows.view(batch, k), stats.present),
            "smooth": _image_mean(stats.smooth, stats.present),
            "seed": _seed_loss(embedding[:, -1].flatten(1), own, scored, flat, self.foreground_weight),
            "ce": ce,
            "dice": dice,
            "count": count,
        }
        total = sum(self.weights[name] * terms[key] for name, key in _TERM_OF_WEIGHT.items())
        return {"loss": total, **terms}
