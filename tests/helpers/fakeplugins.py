"""Small plugins as source text, installed as fake distributions (instseg.testing.fake_distribution).

The plugin modules import torch only inside their factories, like well-behaved plugins.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from instseg.testing import fake_distribution


def plugin_source(prefix: str, body: str = "") -> str:
    """A module registering backbone '<prefix>-encoder' and model '<prefix>-unet'; `body` is appended."""
    return f'''
from instseg import ModelSpec, hookimpl

CALLS = []


def encoder(in_channels=3, width=4):
    """A one-level UNet encoder (strides 1, 2): tiny and fast."""
    from instseg.models.architectures.unet import UNetEncoder
    return UNetEncoder(in_channels, width=width, depth=1)


def decoder(backbone, **kwargs):
    from instseg.models.architectures.unet import UNetDecoder
    return UNetDecoder(backbone, **kwargs)


@hookimpl
def register_backbones(register):
    CALLS.append("register_backbones")
    register("{prefix}-encoder", encoder)


@hookimpl
def register_models(register):
    CALLS.append("register_models")
    register(ModelSpec(name="{prefix}-unet", decoder=decoder, default_backbone="{prefix}-encoder"))
{body}'''


def failing_hook_source(prefix: str) -> str:
    """Like plugin_source, but register_models raises after registering its model."""
    return plugin_source(prefix).replace(
        f'default_backbone="{prefix}-encoder"))', f'default_backbone="{prefix}-encoder"))\n    raise RuntimeError("boom")')


@contextlib.contextmanager
def installed(root: Path, distribution: str, module: str, source: str, *, entry_point: str | None = None,
              version: str = "0.1.0") -> Iterator[Path]:
    """`distribution` with one plugin module, discoverable under entry point `entry_point` (default: module)."""
    with fake_distribution(root / distribution, distribution, {entry_point or module: module},
                           {f"{module}.py": source}, version=version) as path:
        yield path
