"""`instseg.torchfree` is numpy-only by construction: every module imports with torch blocked,
and the moved module paths still import, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import instseg.torchfree

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError


def test_every_torchfree_module_imports_without_torch():
    names = sorted(m.name for m in pkgutil.iter_modules(instseg.torchfree.__path__, "instseg.torchfree."))
    assert {"instseg.torchfree.pipeline", "instseg.torchfree.clustering", "instseg.torchfree.metrics",
            "instseg.torchfree.imageio", "instseg.torchfree.render", "instseg.torchfree.scoring"} <= set(names)
    code = BLOCK_TORCH + "".join(f"import {name}\n" for name in names) + "import instseg.runtime\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("old, new, name", [
    ("instseg.pipeline", "instseg.torchfree.pipeline", "predict"),
    ("instseg.pipeline", "instseg.torchfree.inputs", "gather_inputs"),
    ("instseg.imageio", "instseg.torchfree.imageio", "read_image"),
    ("instseg.render", "instseg.torchfree.render", "overlay"),
    ("instseg.core.clustering", "instseg.torchfree.clustering", "ClusterParams"),
    ("instseg.core.metrics", "instseg.torchfree.metrics", "score_image"),
])
def test_moved_modules_still_import_with_a_deprecation_warning(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
