"""Sample data: one of instseg's synthetic rosettes and its true leaves."""

from __future__ import annotations

from typing import Any

from instseg.data.synthetic import render_plant
from napari_instseg._layers import instance_features

SIZE = 512  # pixels a side: large enough to see each leaf, small enough to render in ~0.2 s


def rosette() -> list[tuple[Any, dict[str, Any], str]]:
    """A synthetic plant (RGB) and its leaves (the ground truth), as instseg renders them."""
    image, labels = render_plant(seed=0, index=0, size=SIZE, split="test")
    return [(image, {"name": "rosette", "rgb": True}, "image"),
            (labels, {"name": "rosette truth", "features": instance_features(labels), "opacity": 0.5}, "labels")]
