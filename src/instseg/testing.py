"""Checks a model must pass, shared by instseg's own tests and by plugin authors.

    from instseg.testing import check_forward_shapes, check_backward, check_overfit

    @pytest.mark.parametrize("name", ["my-model"])
    def test_my_model(name):
        check_forward_shapes(name)
        check_backward(name)

Every check builds a tiny-width instance (`width=TINY_WIDTH`), runs on the CPU and raises
AssertionError with a message naming the model when the contract is broken.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from instseg.core.data.synthetic import render_plant
from instseg.core.interfaces import SegOutput
from instseg.core.losses import MultiTaskLoss
from instseg.core.registry import create_model

TINY_WIDTH = 4
SHAPES = ((64, 64), (72, 88))


def tiny_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """A small instance of a registered model for fast CPU tests."""
    torch.manual_seed(0)
    return create_model(name, **{"width": TINY_WIDTH, "embedding_dim": 8, **kwargs})


def synthetic_batch(n: int = 2, size: int | tuple[int, int] = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic images (n x 3 x H x W in [0, 1]) and their label maps (n x H x W int64)."""
    pairs = [render_plant(seed, i, size) for i in range(n)]
    images = torch.stack([torch.from_numpy(img).permute(2, 0, 1).float() / 255 for img, _ in pairs])
    labels = torch.stack([torch.from_numpy(lab).long() for _, lab in pairs])
    return images, labels


def check_output(name: str, out: SegOutput, batch: int, h: int, w: int, embedding_dim: int) -> None:
    assert isinstance(out, SegOutput), f"{name}: forward must return SegOutput, got {type(out).__name__}"
    assert out.semantic.shape == (batch, 2, h, w), f"{name}: semantic {tuple(out.semantic.shape)} != {(batch, 2, h, w)}"
    assert out.embedding.shape == (batch, embedding_dim, h, w), \
        f"{name}: embedding {tuple(out.embedding.shape)} != {(batch, embedding_dim, h, w)}"
    assert out.count.shape == (batch, 1), f"{name}: count {tuple(out.count.shape)} != {(batch, 1)}"
    assert bool(((out.count >= 0) & (out.count <= 1)).all()), f"{name}: count must lie in [0, 1]"
    for field, tensor in zip(SegOutput._fields, out):
        assert torch.isfinite(tensor).all(), f"{name}: {field} output is not finite"


def check_forward_shapes(name: str, shapes: Sequence[tuple[int, int]] = SHAPES, batch: int = 2, **kwargs: Any) -> None:
    """Outputs have the documented shapes at each input size (odd sizes included)."""
    model = tiny_model(name, **kwargs).eval()
    dim = model.embedding_dim
    with torch.no_grad():
        for h, w in shapes:
            check_output(name, model(torch.rand(batch, 3, h, w)), batch, h, w, dim)


def check_backward(name: str, size: tuple[int, int] = (64, 64), **kwargs: Any) -> None:
    """One loss.backward(): every trainable parameter gets a finite, non-None gradient."""
    model = tiny_model(name, **kwargs).train()
    images, labels = synthetic_batch(2, size)
    terms = MultiTaskLoss(model.max_instances)(model(images), labels)
    terms["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"


def check_overfit(name: str, steps: int = 60, lr: float = 3e-3, size: int = 64, factor: float = 0.5,
                  **kwargs: Any) -> tuple[float, float]:
    """Training on two synthetic images drives the total loss below `factor` x its start."""
    model = tiny_model(name, **kwargs).train()
    images, labels = synthetic_batch(2, size)
    loss_fn = MultiTaskLoss(model.max_instances)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    first = last = float("nan")
    for step in range(steps):
        loss = loss_fn(model(images), labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = loss.item()
        first = last if step == 0 else first
    assert last < factor * first, f"{name}: loss fell only from {first:.4f} to {last:.4f} in {steps} steps"
    return first, last
