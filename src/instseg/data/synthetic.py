"""Synthetic leaves: plant-like rosettes that resemble CVPPP A1 (its leaf counts, sizes and colours).

Each image is a top-down rosette of 5-20 leaves: obovate/teardrop or elliptic blades on
thin petioles radiating from a center with golden-angle phyllotaxis, older (outer, larger)
leaves first and younger (inner, smaller) leaves on top. Leaves are shaded darker towards
their rims and bases with a lighter midrib, so overlapping leaves of the same green are
still separable - as they are in real photographs. The background is a brown soil texture
(multi-octave value noise plus pebbles); the whole image gets a lighting gradient and
sensor noise. Label maps are taken after occlusion; leaves hidden down to a few pixels
are dropped before coloring, so every label is a visible leaf.

Everything is numpy and deterministic per (seed, split, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEAF_RGB = np.array([106.0, 164.0, 36.0])
SOIL_RGB = np.array([138.0, 88.0, 55.0])
GOLDEN_ANGLE = np.deg2rad(137.508)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    min_leaves: int = 5
    max_leaves: int = 20
    plant_radius: tuple[float, float] = (0.22, 0.40)  # fraction of the image side
    min_visible_area: float = 1.5e-4  # fraction of the image; CVPPP's smallest leaf is ~3e-4
    noise_sigma: tuple[float, float] = (2.0, 6.0)  # on the 0-255 scale


@dataclass(frozen=True)
class Leaf:
    angle: float  # direction from the plant center
    petiole: float  # petiole length (px)
    length: float  # blade length (px)
    half_width: float  # maximum blade half width (px)
    a: float  # blade profile t^a (1-t)^c: a, c set where it is widest
    c: float
    bend: float  # sideways curvature of the blade
    stalk_width: float  # petiole half width (px)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random cells x cells grid, bilinearly interpolated."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    ys = np.linspace(0, cells, h, endpoint=False)
    xs = np.linspace(0, cells, w, endpoint=False)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _soil(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = SOIL_RGB + rng.normal(0, 7, 3)
    texture = sum(_value_noise(rng, h, w, cells) * amp for cells, amp in ((3, 14), (9, 9), (27, 6)))
    texture = texture + 5 * rng.standard_normal((h, w), dtype=np.float32)
    img = (base[None, None, :] + texture[..., None] * np.array([1.0, 0.85, 0.7])).astype(np.float32)
    # Pebbles: small light or dark blobs, like grit in potting soil.
    for _ in range(rng.integers(6, 20)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.004, 0.012) * max(h, w)
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[y0:y1, x0:x1][blob] += rng.choice([-35.0, 30.0]) + rng.normal(0, 5, 3)
    return img


def _leaves(rng: np.random.Generator, side: float, cfg: SyntheticConfig) -> list[Leaf]:
    n = int(rng.integers(cfg.min_leaves, cfg.max_leaves + 1))
    radius = rng.uniform(*cfg.plant_radius) * side
    start = rng.uniform(0, 2 * np.pi)
    leaves = []
    for i in range(n):
        age = 1.0 - i / max(n - 1, 1)  # 1 = oldest (drawn first), 0 = youngest (on top)
        reach = radius * (0.3 + 0.7 * age ** 0.8) * rng.uniform(0.85, 1.1)
        petiole = reach * rng.uniform(0.15, 0.35)
        length = reach - petiole
        elongation = rng.uniform(1.3, 2.6)
        shape = rng.choice(["obovate", "elliptic"], p=[0.7, 0.3])
        a, c = (rng.uniform(0.7, 1.2), rng.uniform(0.35, 0.55)) if shape == "obovate" else (0.5, 0.5)
        leaves.append(Leaf(
            angle=start + i * GOLDEN_ANGLE + rng.normal(0, 0.15),
            petiole=petiole,
            length=length,
            half_width=length / (2 * elongation),
            a=a,
            c=c,
            bend=rng.normal(0, 0.12),
            stalk_width=max(0.8, 0.006 * side),
        ))
    return leaves


def _leaf_geometry(leaf: Leaf, center: tuple[float, float], shape: tuple[int, int]):
    """Mask and shading coordinates of one leaf inside its bounding box.

    Returns (y0, x0, mask, t, rim) where t in [0, 1] runs along the blade and rim in [0, 1]
    is the relative distance from the midrib (1 at the blade edge).
    """
    h, w = shape
    reach = leaf.petiole + leaf.length
    r = reach + leaf.half_width + 2
    y0, y1 = max(0, int(center[0] - r)), min(h, int(center[0] + r) + 1)
    x0, x1 = max(0, int(center[1] - r)), min(w, int(center[1] + r) + 1)
    if y0 >= y1 or x0 >= x1:
        return y0, x0, np.zeros((0, 0), bool), None, None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    ca, sa = np.cos(leaf.angle), np.sin(leaf.angle)
    u = dx * ca + dy * sa  # along the leaf axis, from the plant center
    v = -dx * sa + dy * ca  # across it
    t = (u - leaf.petiole) / leaf.length
    v_bent = v - leaf.bend * np.clip(t, 0, 1) ** 2 * leaf.length
    tc = np.clip(t, 1e-6, 1 - 1e-6)
    peak = (leaf.a / (leaf.a + leaf.c)) ** leaf.a * (leaf.c / (leaf.a + leaf.c)) ** leaf.c
    half = leaf.half_width * tc ** leaf.a * (1 - tc) ** leaf.c / peak
    blade = (t >= 0) & (t <= 1) & (np.abs(v_bent) <= half)
    stalk = (u >= 0) & (t < 0.05) & (np.abs(v) <= leaf.stalk_width)
    rim = np.where(blade, np.abs(v_bent) / np.maximum(half, 1e-6), np.abs(v) / leaf.stalk_width)
    return y0, x0, blade | stalk, np.clip(t, 0, 1), np.clip(rim, 0, 1)


def render_plant(
    seed: int,
    index: int,
    size: int | tuple[int, int] = 256,
    split: str = "train",
    cfg: SyntheticConfig = SyntheticConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic plant: (H x W x 3 uint8 RGB image, H x W int32 labels 1..N, 0 = soil)."""
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < 16:
        raise ValueError(f"synthetic images must be at least 16 px, got {h}x{w}")
    rng = _rng(seed, split, index)
    side = float(min(h, w))
    center = (h / 2 + rng.normal(0, 0.06) * h, w / 2 + rng.normal(0, 0.06) * w)
    leaves = _leaves(rng, side, cfg)
    geometry = [_leaf_geometry(leaf, center, (h, w)) for leaf in leaves]

    # Occlusion: paint ids in age order, drop leaves left with too few visible pixels.
    # Dropping a leaf only uncovers others, so one repaint keeps every survivor large enough.
    def paint(keep: list[int]) -> np.ndarray:
        labels = np.zeros((h, w), np.int32)
        for i in keep:
            y0, x0, mask, _, _ = geometry[i]
            labels[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]][mask] = i + 1
        return labels

    labels = paint(list(range(len(leaves))))
    areas = np.bincount(labels.ravel(), minlength=len(leaves) + 1)[1:]
    keep = [i for i in range(len(leaves)) if areas[i] >= cfg.min_visible_area * h * w]
    if len(keep) < len(leaves):
        labels = paint(keep)

    image = _soil(rng, h, w)
    leaf_base = LEAF_RGB + rng.normal(0, 7, 3)
    for i in keep:
        y0, x0, mask, t, rim = geometry[i]
        tone = leaf_base * rng.uniform(0.85, 1.12) + rng.normal(0, 6, 3)
        shade = (0.72 + 0.28 * t ** 0.5) * (1.0 - 0.38 * rim ** 3)
        shade = shade + 0.12 * (rim < 0.07) * (t > 0.05)  # lighter midrib
        region = image[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        region[mask] = tone[None, :] * shade[mask][:, None]

    light = 1.0 + 0.08 * _value_noise(rng, h, w, 2)
    noise = rng.uniform(*cfg.noise_sigma) * rng.standard_normal((h, w, 3), dtype=np.float32)
    image = image * light[..., None].astype(np.float32) + noise
    image = np.clip(image, 0, 255).astype(np.uint8)

    lut = np.zeros(len(leaves) + 1, np.int32)
    lut[[i + 1 for i in keep]] = np.arange(1, len(keep) + 1)
    return image, lut[labels]


def write_photos(folder: str, count: int, size: int = 256, seed: int = 0) -> list[str]:
    """`count` synthetic plants as `plantN.png` photographs in `folder` (no labels): pictures to
    try `instseg predict` and `instseg.load(...).segment` on."""
    from pathlib import Path

    from instseg.io.writing import write_rgb

    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = [str(Path(folder) / f"plant{i}.png") for i in range(count)]
    for i, path in enumerate(paths):
        write_rgb(path, render_plant(seed, i, size, split="test")[0])
    return paths


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m instseg.data.synthetic", description=write_photos.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    arguments = parser.parse_args()
    print("\n".join(write_photos(arguments.folder, arguments.count, arguments.size)))
