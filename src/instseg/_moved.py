"""Old module paths that moved into `instseg.torchfree`: importing one still works, with a
DeprecationWarning naming the new home (removed in instseg 0.3)."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def reexport(old: str, new: tuple[str, ...], namespace: dict[str, Any]) -> None:
    """Fill `namespace` (the old module's globals) with the public names of the `new` modules."""
    warnings.warn(f"{old} moved to {' / '.join(new)}; import from there", DeprecationWarning, stacklevel=3)
    for name in new:
        module = importlib.import_module(name)
        namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
