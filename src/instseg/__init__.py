"""instseg: semantic instance segmentation with a discriminative loss.

Public API (torch is imported only when a torch-backed name is first used, so the ONNX
inference path stays torch-free):

    from instseg import hookimpl, ModelSpec, Backbone, Decoder, create_model, list_models
"""

from __future__ import annotations

from typing import Any

from instseg.models.hookspecs import hookimpl, hookspec
from instseg.models.registry import (
    PluginError,
    RegistryError,
    create_backbone,
    create_model,
    get_registry,
    list_backbones,
    list_models,
)
from instseg.models.specs import BackboneSpec, ExportCaps, ModelSpec
from instseg.errors import ConfigError, InstsegError
from instseg.version import __version__


_LAZY = {
    "Backbone": "instseg.models.interfaces",
    "Decoder": "instseg.models.interfaces",
    "SegOutput": "instseg.models.interfaces",
    "SegmentationModel": "instseg.models.interfaces",
}

__all__ = [
    "Backbone", "BackboneSpec", "ConfigError", "Decoder", "ExportCaps", "InstsegError", "ModelSpec", "PluginError",
    "RegistryError", "SegOutput", "SegmentationModel", "create_backbone", "create_model", "get_registry",
    "hookimpl", "hookspec", "list_backbones", "list_models", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instseg' has no attribute '{name}'")
