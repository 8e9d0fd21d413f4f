"""Image and label-map files (numpy + Pillow only: the ONNX inference path uses this too).

Images become H x W x 3 float32 RGB in [0, 1] whatever they are stored as (grey, RGBA,
palette, 8- or 16-bit). Label maps are read as their stored integer values - palette PNGs
by index, never converted to colours - and written as 16-bit PNGs. Every failure raises
DataError naming the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from instseg.atomic import atomic_write_bytes
from instseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image is too large to read safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image is truncated or corrupted ({exc})") from exc
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 float32 RGB in [0, 1]; alpha is dropped, grey is repeated, 16-bit is scaled."""
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        array = np.clip(array / scale, 0.0, 1.0)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "F":
        raise DataError(f"{path}: floating-point images are not supported as input")
    if image.mode != "RGB":
        image = image.convert("RGB")  # palette, grey, RGBA (alpha dropped), CMYK ...
    return np.asarray(image, dtype=np.float32) / 255.0


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """H x W int64 instance ids as stored (palette indices for palette PNGs); 0 = background."""
    image = _open(path)
    if image.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(image).astype(np.int64)
    if image.mode == "F":
        raise DataError(f"{path}: label map holds floating-point values; instance ids must be integers")
    raise DataError(f"{path}: label map must be a palette or single-channel image, got mode {image.mode}")


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write instance ids as a 16-bit greyscale PNG (atomically)."""
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label ids must lie in 0..65535 for a 16-bit PNG")
    image = Image.fromarray(labels.astype(np.uint16))
    _atomic_save(image, Path(path))


def write_rgb(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an H x W x 3 uint8 image (atomically; the format follows the suffix)."""
    _atomic_save(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)), Path(path))


def _atomic_save(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    atomic_write_bytes(path, buffer.getvalue())


def working_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """The size an image is processed at: shorter side -> image_size, aspect ratio kept.

    Training resizes by this rule before cropping `image_size` squares, and prediction resizes
    by it too, so objects appear at the same scale in both; label maps go back to the original
    size with nearest-neighbour resampling.
    """
    scale = image_size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H x W x C float32 image to `size` = (height, width)."""
    if image.shape[:2] == tuple(size):
        return image
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), "F")
                   .resize((size[1], size[0]), Image.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H x W integer label map (ids are never blended)."""
    if labels.shape == tuple(size):
        return labels
    resized = Image.fromarray(labels.astype(np.int32), "I").resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(resized).astype(labels.dtype)
