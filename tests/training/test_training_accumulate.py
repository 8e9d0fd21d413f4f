"""--accumulate K: K micro-batches of B images train like one batch of K x B images.

With BatchNorm they cannot: each micro-batch is normalised with its own statistics (exactly as
each DDP process normalises its own batch - test_training_ddp.py checks that equivalence on the
real model). So this test builds the same architecture with GroupNorm(1, C) in place of every
BatchNorm2d - per-image normalisation, independent of the batch - and then the only difference
left is the order in which float gradients are summed. The gradients of the first step are
compared (relative 1e-4 of each, absolute 1e-6 of the largest): a wrong 1/K scale or a lost
micro-batch changes them by half or more. The weights after that one Adam step are compared too,
but only as `assert_same_training` does: Adam divides each gradient by its own magnitude, so on
some CPUs the rounding of gradients that are zero but for rounding (dead channels of the tiny
network's deepest level) moves those weights by a whole step; after two steps, 21% of the
weights differed that way on an AMD EPYC (AVX-512, no AMX) although every gradient matched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import BatchNorm2d

from instseg.train.trainer import Trainer
from training_support import assert_same_training, parameters, recording_console, tiny_config


@pytest.fixture
def group_norm_instead_of_batch_norm(monkeypatch):
    monkeypatch.setattr(nn, "BatchNorm2d", lambda channels, **kwargs: nn.GroupNorm(1, channels))


def trainer(tmp_path, name, **overrides) -> Trainer:
    return Trainer(tiny_config(tmp_path, name=name, train_size=16, **overrides), recording_console())


def test_two_micro_batches_of_four_match_one_batch_of_eight(tmp_path, group_norm_instead_of_batch_norm):
    accumulated = trainer(tmp_path, "k2", accumulate=2, batch_size=4)
    whole = trainer(tmp_path, "k1", accumulate=1, batch_size=8)
    assert not any(isinstance(m, BatchNorm2d) for m in whole.model.modules())
    assert accumulated.steps_per_epoch == whole.steps_per_epoch == 2
    micro = list(accumulated.train_loader)[:2]
    [batch] = list(whole.train_loader)[:1]
    assert torch.equal(torch.cat([m["image"] for m in micro]), batch["image"])  # the same 8 images, in order
    accumulated.train_step(micro)
    whole.train_step([batch])
    grads = {n: p.grad for n, p in whole.model.named_parameters()}
    largest = max(g.abs().max().item() for g in grads.values())
    for name, p in accumulated.model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6 * largest, msg=name)
    a = parameters(accumulated.model.state_dict(), whole.model)
    b = parameters(whole.model.state_dict(), whole.model)
    assert_same_training(a, b, whole.config.lr)


def test_accumulated_gradient_is_the_mean_of_the_micro_batch_gradients(tmp_path):
    """The real (BatchNorm) model: K micro-batches give the gradient of the mean of K separate
    losses - what K DDP processes compute - not the gradient of one K x B batch."""
    trainer = Trainer(tiny_config(tmp_path, train_size=16, accumulate=2, batch_size=4, grad_clip=0.0),
                      recording_console())
    batches = list(trainer.train_loader)[:2]
    images = torch.cat([b["image"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    halves = [trainer.loss_fn(trainer.model(images[i:i + 4]), labels[i:i + 4])["loss"] for i in (0, 4)]
    ((halves[0] + halves[1]) / 2).backward()
    expected = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(batches)  # zeroes the gradients first and leaves its own in place
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
