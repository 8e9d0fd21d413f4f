"""Checks a model must pass, shared by instseg's own tests and by plugin authors.

    from instseg.testing import (check_backbone, check_forward_shapes, check_backward, check_onnx_parity,
                                 plugin_models)

    @pytest.mark.parametrize("name", plugin_models("instseg-mything"))
    def test_my_model(name):
        check_forward_shapes(name)
        check_backward(name)
        check_onnx_parity(name)

Every check builds a tiny-width instance (`width=TINY_WIDTH`), runs on the CPU and raises
AssertionError with a message naming the model when the contract is broken. The plugin
helpers (`only_plugins`, `plugin_models`, `plugin_backbones`, `fake_distribution`) let a
test see exactly the plugins it is about, whatever else is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from instseg.data.synthetic import render_plant
from instseg.errors import PluginError
from instseg.instances.clustering import ClusterParams
from instseg.models.discovery import DISABLE_ENV, ONLY_ENV, PluginSelection, of_distribution
from instseg.models.factory import create_backbone, create_model
from instseg.models.interfaces import SegOutput
from instseg.models.registry import Registry, get_registry, plugin_requirements, reset_registry
from instseg.train.losses import MultiTaskLoss

if TYPE_CHECKING:
    from instseg.exporters.onnx import ExportResult

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


def check_backbone(name: str, size: int | None = None, batch: int = 2, **kwargs: Any) -> None:
    """The Backbone contract: `width` and `in_channels` are honoured, and `forward` returns
    one map per entry of `out_channels` / `strides` with those channels at H/stride x W/stride
    (for an input whose sides divide by the largest stride)."""
    for in_channels in (3, 1):
        try:
            backbone = create_backbone(name, in_channels=in_channels, **{"width": TINY_WIDTH, **kwargs}).eval()
        except TypeError as exc:
            raise AssertionError(f"{name}: factory(in_channels, width=...) failed: {exc}") from exc
        assert isinstance(backbone, torch.nn.Module), f"{name}: a backbone must be an nn.Module"
        channels, strides = tuple(backbone.out_channels), tuple(backbone.strides)
        side = size or max(64, 2 * max(strides))
        assert side % max(strides) == 0, f"{name}: size {side} must divide by the largest stride {max(strides)}"
        with torch.no_grad():
            features = backbone(torch.rand(batch, in_channels, side, side))
        assert isinstance(features, (list, tuple)), f"{name}: forward must return a list of tensors"
        assert len(features) == len(channels), \
            f"{name}: forward returned {len(features)} maps, out_channels declares {len(channels)}"
        for i, (f, c, s) in enumerate(zip(features, channels, strides)):
            expected = (batch, c, side // s, side // s)
            assert tuple(f.shape) == expected, f"{name}: feature {i} is {tuple(f.shape)}, declared {expected}"


def check_onnx_parity(name: str, path: str | os.PathLike | None = None, image_size: int = 64, fp16: bool = False,
                      **kwargs: Any) -> "ExportResult":
    """Export a tiny instance as `instseg export --onnx` would and compare ONNX Runtime with PyTorch.

    The model's ExportCaps choose the exporter and the dynamic axes; ONNX Runtime (CPU) must
    match PyTorch on all three outputs (rtol 1e-3, atol 1e-5) at the export shape (batch 2,
    `image_size` rounded up to the model's multiple) and, for a dynamic graph, at a second
    shape (batch 1, larger and not square). `path` keeps the file (a temporary folder is used
    otherwise); `kwargs` reach `create_model` (e.g. `backbone=`). fp16 parity is returned,
    not asserted. Returns the ExportResult: plan, metadata and the error of every output.
    """
    from instseg.errors import ExportError
    from instseg.exporters.onnx import ExportRequest, export_onnx

    spec = get_registry().model_spec(name)
    model = tiny_model(name, **kwargs).eval()
    backbone = spec.backbone_for(kwargs.get("backbone"))
    request = ExportRequest(model=model, name=spec.name, backbone=backbone, caps=spec.export, image_size=image_size,
                            cluster=ClusterParams(), plugins=plugin_requirements(spec.name, backbone),
                            source=f"instseg.testing.tiny_model({name!r})", fp16=fp16)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory())) if path is None else None
        try:
            result = export_onnx(request, Path(path) if path is not None else folder / f"{name}.onnx")
        except ExportError as exc:
            raise AssertionError(str(exc)) from exc
    misses = [f"{'x'.join(map(str, r.shape))} {r.output}: " + (r.error or f"max abs {r.max_abs:.2e} ({r.tolerance})")
              for r in result.parity if not r.ok]
    assert fp16 or not misses, f"{name}: ONNX Runtime differs from PyTorch ({result.plan.describe()}): " \
                               + "; ".join(misses)
    return result


@contextlib.contextmanager
def only_plugins(*distributions: str) -> Iterator[None]:
    """Inside: discovery loads the built-ins and only these third-party distributions.

    Sets INSTSEG_PLUGINS (and clears INSTSEG_DISABLE_PLUGINS) for this process and the
    processes it starts, resets the registry on entry and exit, restores the environment.
    A distribution that is not installed is an error here, not an empty test later.
    """
    for dist in distributions:
        _require_installed(dist)
    saved = {k: os.environ.get(k) for k in (DISABLE_ENV, ONLY_ENV)}
    os.environ.pop(DISABLE_ENV, None)
    os.environ[ONLY_ENV] = ",".join(distributions)
    reset_registry()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_registry()


def plugin_models(distribution: str) -> list[str]:
    """Names of the models a distribution registers, for `pytest.mark.parametrize`.

    Reads a private registry that loads only this distribution, so it works at collection
    time whatever the environment says; a distribution that is missing, failed to load or
    registers no model is an error.
    """
    return _contributions(distribution, "model")


def plugin_backbones(distribution: str) -> list[str]:
    """Names of the backbones a distribution registers (see `plugin_models`)."""
    return _contributions(distribution, "backbone")


def _contributions(distribution: str, kind: str) -> list[str]:
    _require_installed(distribution)
    registry = Registry(PluginSelection.only_distributions(distribution))
    mine = of_distribution(registry.plugins.values(), distribution)
    failed = [p for p in mine if p.error]
    if failed:
        raise PluginError("; ".join(f"{p.label} failed to load: {p.error}" for p in failed))
    names = [key.split(":", 1)[1] for p in mine for key in p.registered if key.startswith(f"{kind}:")]
    if not names:
        raise PluginError(f"distribution '{distribution}' registers no {kind}")
    return sorted(names)


def _require_installed(distribution: str) -> None:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise PluginError(f"distribution '{distribution}' is not installed in this environment "
                          f"({sys.executable}); pip install it first") from None


@contextlib.contextmanager
def fake_distribution(directory: str | os.PathLike, name: str, entry_points: Mapping[str, str],
                      files: Mapping[str, str], version: str = "0.1.0") -> Iterator[Path]:
    """An installed-looking distribution without pip: test discovery in milliseconds.

    Writes `files` ({relative path: source}) and a `<name>-<version>.dist-info` folder
    (METADATA, entry_points.txt with `entry_points` in the `instseg` group) into
    `directory`, puts it on sys.path and resets the registry, so real importlib.metadata
    discovery finds it (child processes inherit sys.path through multiprocessing spawn).
    On exit it is removed from sys.path and its modules are forgotten.
    """
    root = Path(directory)
    for rel, source in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(source)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[instseg]\n{lines}")
    top_level = {Path(rel).parts[0].removesuffix(".py") for rel in files}
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    reset_registry()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for module in [m for m in sys.modules if m.split(".")[0] in top_level]:
            del sys.modules[module]
        reset_registry()
