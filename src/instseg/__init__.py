"""instseg: semantic instance segmentation with a discriminative loss.

    import instseg
    model = instseg.load("runs/unet-cbam-...")    # a run directory, a checkpoint or an .onnx file
    labels = model.segment(image)                # an H x W instance label map
    instseg.export("runs/unet-cbam-...", out="model.onnx")

Plugins: `hookimpl`, `ModelSpec`, `BackboneSpec`, `ExportCaps`, `ObjectiveSpec`, `Backbone`,
`Decoder`; `create_model`, `list_models`. Names are imported when first used, so `import instseg` is cheap and
the ONNX path stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

from instseg.errors import ConfigError, InstsegError, PluginError, RegistryError
from instseg.models.specs import BackboneSpec, ExportCaps, ModelSpec, ObjectiveSpec
from instseg.version import __version__

_LAZY = {  # imported on first use: torch-backed names, and the predictor (numpy, Pillow, scipy)
    "Predictor": "instseg.predictor",
    "load": "instseg.predictor",
    "export": "instseg.predictor",
    "Backbone": "instseg.models.interfaces",
    "Decoder": "instseg.models.interfaces",
    "SegOutput": "instseg.models.interfaces",
    "SegmentationModel": "instseg.models.interfaces",
    "create_model": "instseg.models.factory",
    "create_backbone": "instseg.models.factory",
    # pluggy and the plugin registry: `instseg infer` (import instseg.cli.main) never needs them
    "hookimpl": "instseg.models.hookspecs",
    "hookspec": "instseg.models.hookspecs",
    "get_registry": "instseg.models.registry",
    "list_backbones": "instseg.models.registry",
    "list_models": "instseg.models.registry",
}

__all__ = [
    "Backbone", "BackboneSpec", "ConfigError", "Decoder", "ExportCaps", "InstsegError", "ModelSpec", "ObjectiveSpec",
    "PluginError",
    "Predictor", "RegistryError", "SegOutput", "SegmentationModel", "create_backbone", "create_model", "export",
    "get_registry", "hookimpl", "hookspec", "list_backbones", "list_models", "load", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instseg' has no attribute '{name}'")
