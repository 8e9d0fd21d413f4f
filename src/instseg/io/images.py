"""Image and label-map files (numpy + Pillow only: the ONNX inference path uses this too).

Images become H x W x 3 float32 RGB in [0, 1] whatever they are stored as (grey, RGBA,
palette, 8- or 16-bit, PNG / TIFF / JPEG / BMP). Label maps are read as their stored integer
values - palette PNGs by index, never converted to colors - and written as 16-bit PNGs.
Every file is read in its displayed orientation (EXIF orientation applied), so a mask drawn
on a phone photo lines up with it. Every failure raises DataError naming the file, including
images larger than Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), which are
refused before any pixel is decoded. File names that are not valid UTF-8 are shown with
backslash escapes, so an error message can always be printed.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from instseg.errors import DataError
from instseg.io.atomic import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "1")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# What Pillow raises on damaged files (UnidentifiedImageError is an OSError: caught first).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def display_path(path: str | os.PathLike) -> str:
    """A printable form of a path: bytes that are not UTF-8 appear as backslash escapes."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without decoding pixels (height/width as displayed)."""

    height: int
    width: int
    mode: str
    format: str


@contextmanager
def _opened(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Open lazily (header only) with the decompression-bomb limit enforced as an error."""
    shown = display_path(path)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{shown}: no such file")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{shown}: cannot open ({exc.strerror})") from exc
    with handle:
        try:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{shown}: refused, too large to decode safely ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise DataError(f"{shown}: not a readable image") from exc
        except _DECODE_ERRORS as exc:
            raise DataError(f"{shown}: image header is corrupted ({exc})") from exc
        with image:
            _check_aspect(image.size, shown)
            yield image


MAX_ASPECT = 20  # images are scaled so that their shorter side is the working size: bound the longer one


def _check_aspect(size: tuple[int, int], shown: str) -> None:
    """Refuse very elongated images: a 1x2000 PNG would be worked on at 64x128000 pixels."""
    width, height = size
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise DataError(f"{shown}: {width}x{height} is too elongated (more than {MAX_ASPECT}:1); scaled so that "
                        "its shorter side is the working size it would need far too much memory: crop it first")


def _decode(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    """Decode the pixels and apply the EXIF orientation."""
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except _DECODE_ERRORS as exc:
        raise DataError(f"{display_path(path)}: image is truncated or corrupted ({exc})") from exc


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Size (as displayed), mode and format from the header alone: cheap enough to scan a dataset."""
    with _opened(path) as image:
        width, height = image.size
        if _orientation(image, path) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return ImageHeader(height, width, image.mode, image.format or "")


def _orientation(image: Image.Image, path: str | os.PathLike) -> int:
    """The EXIF orientation from the header. A PNG may store EXIF after its pixels, and Pillow
    would decode the whole image to find it: such a PNG reads as not rotated here."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS as exc:
        raise DataError(f"{display_path(path)}: image metadata is corrupted ({exc})") from exc


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 float32 RGB in [0, 1]; alpha is dropped, grey is repeated, 16-bit is scaled."""
    with _opened(path) as opened:
        if opened.mode == "F":
            raise DataError(f"{display_path(path)}: floating-point images are not supported as input")
        image = _decode(opened, path)
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            array = np.asarray(image, dtype=np.float32)
            scale = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
            array /= scale
            return np.repeat(np.clip(array, 0.0, 1.0, out=array)[..., None], 3, axis=2)
        if image.mode != "RGB":
            try:  # palette, grey, RGBA (alpha dropped), CMYK ...
                image = image.convert("RGB")
            except ValueError as exc:
                raise DataError(f"{display_path(path)}: cannot convert mode {image.mode} to RGB ({exc})") from exc
        array = np.asarray(image, dtype=np.float32)
        array /= 255.0  # in place: a second float copy of an 88 Mpx photo would be 1 GB more
        return array


def image_from_array(array: np.ndarray) -> np.ndarray:
    """A numpy image (H x W or H x W x C with 1, 3 or 4 channels; uint8, uint16, or float in
    [0, 1]) as `read_image` gives a file: H x W x 3 float32 RGB in [0, 1], alpha dropped."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise DataError(f"image array of shape {array.shape}: expected H x W or H x W x C with C = 1, 3 or 4")
    array = array[..., :3] if array.shape[2] == 4 else np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        image = array.astype(np.float32)
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise DataError(f"float image array: values must be finite and in [0, 1] (found "
                            f"{np.nanmin(image):.3g}..{np.nanmax(image):.3g}); scale it first")
        return image
    raise DataError(f"image array of dtype {array.dtype}: expected uint8, uint16 or float in [0, 1]")


def check_label_mode(mode: str, path: str | os.PathLike) -> None:
    """Refuse image modes that cannot hold instance ids (known from the header alone)."""
    if mode == "F":
        raise DataError(f"{display_path(path)}: label map holds floating-point values; instance ids must be integers")
    if mode not in LABEL_MODES:
        raise DataError(f"{display_path(path)}: label map must be a palette or single-channel image, got mode {mode}")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """H x W int64 instance ids as stored (palette indices for palette PNGs); 0 = background."""
    with _opened(path) as opened:
        check_label_mode(opened.mode, path)
        image = _decode(opened, path)
        labels = np.asarray(image).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{display_path(path)}: label map holds negative ids (min {labels.min()})")
    return labels


def write_label_map(path: str | os.PathLike, labels: np.ndarray, output: str | None = None, *,
                    durable: bool = True) -> None:
    """Write instance ids as a 16-bit greyscale PNG (atomically); `output`, `durable`: see `write_image`."""
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label ids must lie in 0..65535 for a 16-bit PNG")
    image = Image.fromarray(labels.astype(np.uint16))
    write_image(path, image, output, durable=durable)


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, output: str | None = None, *, durable: bool = True) -> None:
    """Write an H x W x 3 uint8 image (atomically; the format follows the suffix)."""
    write_image(path, Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)), output, durable=durable)


# How every PNG is compressed: zlib level 1 with run-length matching instead of Pillow's level 6.
# On CVPPP overlays it encodes 4.3x faster at 256 px (4.9 against 20.9 ms) and 2.5x at 512 px
# (19.7 against 50.1 ms), and the files are 9-10% smaller; label maps too (0.5 against 0.8 ms).
PNG_COMPRESSION = {"compress_level": 1, "compress_type": zlib.Z_RLE}
OUTPUT_KEY = "instseg.output"  # PNG text naming what a prediction file is (label, overlay, ...)


def write_image(path: str | os.PathLike, image: Image.Image, output: str | None = None, *,
                durable: bool = True) -> None:
    """Write a Pillow image atomically; the format follows the suffix (PNG when unknown).
    A prediction output PNG carries `instseg.output: <kind>`, so a later run that finds it among
    its inputs knows it is not an image to predict. `durable=False` leaves the fsync to the
    caller (`atomic.atomic_write_bytes`): prediction folders sync once per batch."""
    path = Path(path)
    buffer = io.BytesIO()
    kind = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    extra = dict(PNG_COMPRESSION) if kind == "PNG" else {}
    if kind == "PNG" and output is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", "instseg")
        info.add_text(OUTPUT_KEY, output)
        extra["pnginfo"] = info
    image.save(buffer, format=kind, **extra)
    atomic_write_bytes(path, buffer.getvalue(), durable=durable)


def prediction_output_kind(path: str | os.PathLike) -> str | None:
    """What prediction output a PNG is (`label`, `overlay`, ...), None for any other file;
    reads the header chunks only."""
    try:
        with Image.open(path) as image:
            return image.info.get(OUTPUT_KEY) if image.format == "PNG" else None
    except (OSError, UnidentifiedImageError, ValueError):
        return None


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


def png_is_complete(path: str | os.PathLike) -> bool:
    """Whether a file ends as a whole PNG does: one written before a power cut may exist under
    its name yet be empty or cut short. Reads its last 12 bytes only."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < len(PNG_END):
                return False
            handle.seek(-len(PNG_END), os.SEEK_END)
            return handle.read() == PNG_END
    except OSError:
        return False


def working_size(height: int, width: int, image_size: int, scale: float | None = None) -> tuple[int, int]:
    """The size an image is processed at.

    By default its shorter side -> image_size, aspect ratio kept: objects whose size follows
    the image's (a rosette filling the frame). With `scale`, the image is multiplied by that
    factor whatever its size: objects keep their size in pixels (nuclei in microscopy), and
    `image_size` is only the side of the training crops. Training and prediction apply the
    same rule, so objects appear at the same scale in both; label maps go back to the original
    size with nearest-neighbour resampling.
    """
    factor = scale if scale is not None else image_size / min(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


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
    """Nearest-neighbour resize of an H x W integer label map (ids are never blended), same dtype.

    Nearest-neighbour resizing is separable, so the source row and column of every output pixel
    come from Pillow's own NEAREST mapping of one row and one column of indices, and the map
    is gathered with them: one allocation of the result, where resizing the whole map in Pillow
    held three copies of it (an 88 Mpx label map is 352 MB each)."""
    if labels.shape == tuple(size):
        return labels
    rows, cols = (_nearest_indices(n, target) for n, target in zip(labels.shape, size))
    return labels[rows[:, None], cols[None, :]]


def _nearest_indices(length: int, target: int) -> np.ndarray:
    """The source index of each of `target` positions in Pillow's NEAREST resize of `length`."""
    line = Image.fromarray(np.arange(length, dtype=np.int32)[None, :], "I")
    return np.asarray(line.resize((target, 1), Image.NEAREST))[0].astype(np.intp)
