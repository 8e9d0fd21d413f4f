"""Dataset fixtures generated in the tests (the CVPPP data may not be redistributed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from instseg.data.cvppp import palette_image, write_synthetic_cvppp
from instseg.data.synthetic import render_plant

SIZE = (40, 36)  # H, W: tiny and not square


def cvppp(root: Path, n: int = 6, colors: int = 16, size: tuple[int, int] = SIZE, **kwargs) -> Path:
    """A CVPPP-layout folder; 16 palette colors give 4-bit label PNGs, 256 give 8-bit."""
    return write_synthetic_cvppp(root, n, size, palette_colors=colors, **kwargs)


def png_bit_depth(path: Path) -> int:
    return Path(path).read_bytes()[24]


def write_raw_png(path: Path, width: int, height: int, depth: int, color_type: int, rows: bytes | None = None) -> Path:
    """A PNG written byte by byte: for sizes and depths Pillow will not write (16-bit RGB, bombs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3}[color_type]
    row_bytes = (width * channels * depth + 7) // 8
    if rows is None:
        rows = bytes(height * (row_bytes + 1))  # filter byte 0 + zeros on every row
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def folder(root: Path, sizes=((40, 36), (48, 56), (40, 36), (32, 32)), id_step: int = 1000) -> Path:
    """An images/ + masks/ dataset: PNG, JPEG and TIFF images of several sizes, 16-bit masks
    whose ids are multiples of `id_step` (not contiguous)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    suffixes = (".png", ".jpg", ".tif", ".png")
    for i, size in enumerate(sizes):
        image, labels = render_plant(7, i, size)
        Image.fromarray(image).save(root / "images" / f"img{i}{suffixes[i % len(suffixes)]}")
        mask = Image.fromarray((labels * id_step).astype(np.uint16))
        mask.save(root / "masks" / (f"img{i}.tif" if i % 2 else f"img{i}.png"))
    return root


def labels_of(i: int, size: tuple[int, int] = SIZE, seed: int = 0, max_leaves: int = 15) -> np.ndarray:
    """The label map `cvppp()` wrote for plant i (1-based)."""
    from instseg.data.synthetic import SyntheticConfig

    return render_plant(seed, i, size, cfg=SyntheticConfig(max_leaves=max_leaves))[1]


def write_palette(path: Path, labels: np.ndarray, colors: int = 256) -> Path:
    palette_image(labels, colors).save(path)
    return path


def nuclei_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """~h*w/150 small nuclei (5-8 px squares) on a jittered grid; every third one has a touching
    partner of another red level. Many straddle any tile border."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int32)
    red = np.zeros((h, w), np.float32)
    n = 0
    for y in range(2, h - 20, 14):
        for x in range(2, w - 24, 14):
            side = int(rng.integers(5, 9))
            yy, xx = y + int(rng.integers(0, 3)), x + int(rng.integers(0, 3))
            n += 1
            labels[yy:yy + side, xx:xx + side] = n
            red[yy:yy + side, xx:xx + side] = 0.25
            if n % 3 == 0:  # a touching partner to its right
                n += 1
                labels[yy:yy + side, xx + side:xx + 2 * side - 2] = n
                red[yy:yy + side, xx + side:xx + 2 * side - 2] = 1.0
    image = np.zeros((h, w, 3), np.float32)
    image[..., 0] = red
    image[..., 1] = labels > 0
    return image, labels


def nuclei_folder(root: Path, sizes=((96, 96), (96, 128), (80, 96), (96, 96), (128, 96))) -> Path:
    """An images/ + masks/ dataset of many small nuclei per image (`nuclei_image`), 8-bit grey
    images (fluorescence-like: the nuclei bright) and 16-bit masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        image, labels = nuclei_image(h, w, seed=i)
        grey = np.round(255 * (0.15 + 0.6 * image[..., 1] + 0.2 * image[..., 0])).clip(0, 255).astype(np.uint8)
        Image.fromarray(grey).save(root / "images" / f"n{i}.png")
        Image.fromarray(labels.astype(np.uint16)).save(root / "masks" / f"n{i}.png")
    return root
