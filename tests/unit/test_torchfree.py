"""The ONNX path is numpy-only by construction: every module it needs imports with torch blocked.

The rule is a test, not a folder: whole packages (`io`, `instances`, `metrics`, `runtime`,
`cli`) and the torch-free modules of `predict`, `data` and `train` are imported in a
subprocess where `import torch` raises.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
TORCH_FREE_PACKAGES = ("instseg.io", "instseg.instances", "instseg.metrics", "instseg.runtime", "instseg.cli")
TORCH_FREE_MODULES = (
    "instseg", "instseg.errors", "instseg.limits", "instseg.terminal", "instseg.version",
    "instseg.predict.pipeline", "instseg.predict.stages", "instseg.predict.tiling", "instseg.predict.outputs",
    "instseg.data.layouts", "instseg.data.checks", "instseg.train.config", "instseg.train.presets",
    "instseg.models.registry", "instseg.models.discovery",
)


def _modules(package: str) -> list[str]:
    path = importlib.import_module(package).__path__
    return [package] + [m.name for m in pkgutil.walk_packages(path, package + ".")]


def test_the_onnx_path_imports_without_torch():
    names = sorted({n for p in TORCH_FREE_PACKAGES for n in _modules(p)} | set(TORCH_FREE_MODULES))
    assert {"instseg.io.images", "instseg.instances.clustering", "instseg.metrics.scores",
            "instseg.runtime.runner", "instseg.cli.infer"} <= set(names)
    code = BLOCK_TORCH + "".join(f"import {name}\n" for name in names) + "print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_torch_module_really_is_blocked():
    """The check above can fail: a module that needs torch does not import in the child."""
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import instseg.checkpoint"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "torch" in result.stderr
