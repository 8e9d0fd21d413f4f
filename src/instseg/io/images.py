"""Reading image and label-map files (numpy, Pillow and tifffile: the ONNX inference path uses
this too); `io.writing` writes them.

Images become H x W x 3 float32 RGB in [0, 1] whatever they are stored as (grey, RGBA,
palette, 8- or 16-bit, PNG / TIFF / JPEG / BMP). Label maps are read as their stored integer
values - palette PNGs by index, never converted to colors (TIFF through tifffile, imported there).
Every file is read in its displayed orientation (EXIF orientation applied), so a mask drawn
on a phone photo lines up with it. Every failure raises DataError naming the file, including
images larger than Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), which are
refused before any pixel is decoded. File names that are not valid UTF-8 are shown with
backslash escapes, so an error message can always be printed.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instseg.errors import DataError
from instseg.io.microscopy import (
    FIXED,
    Reading,
    TiffLayout,
    is_tiff,
    oriented,
    pillow_array,
    tiff_array,
    tiff_layout,
    to_network_image,
)

if TYPE_CHECKING:
    import tifffile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "1")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# What Pillow raises on damaged files (UnidentifiedImageError is an OSError: caught first).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def display_path(path: str | os.PathLike) -> str:
    """A printable form of a path: bytes that are not UTF-8 appear as backslash escapes, and so
    does a lone surrogate that no bytes decode to (a str such as '\\ud800' passed from Python)."""
    text = os.fsdecode(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
            raise DataError(f"{shown}: refused, too large to decode safely ({exc}); predict / infer "
                            "--max-pixels raises the limit") from exc
        except UnidentifiedImageError as exc:
            raise DataError(f"{shown}: not a readable image") from exc
        except DECODE_ERRORS as exc:
            raise DataError(f"{shown}: image header is corrupted ({exc})") from exc
        with image:
            _check_aspect(image.size, shown)
            yield image


def over_decode_limit(pixels: int) -> bool:
    """Whether an image of this many pixels is past Pillow's decompression-bomb limit, the bound
    every reader applies (`--max-pixels` moves it; None: no limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and pixels > limit


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
    except DECODE_ERRORS as exc:
        raise DataError(f"{display_path(path)}: image is truncated or corrupted ({exc})") from exc


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Size (as displayed), mode and format from the header alone: cheap enough to scan a dataset.
    A TIFF's mode is Pillow's name for its dtype and channels (`microscopy.TiffLayout.mode`)."""
    if is_tiff(path):
        with _tiff_opened(path) as (_, layout):
            turned = layout.orientation in _TRANSPOSING_ORIENTATIONS
            return ImageHeader(*((layout.width, layout.height) if turned else (layout.height, layout.width)),
                               layout.mode, "TIFF")
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
    except DECODE_ERRORS as exc:
        raise DataError(f"{display_path(path)}: image metadata is corrupted ({exc})") from exc


def read_image(path: str | os.PathLike, reading: Reading = FIXED) -> np.ndarray:
    """H x W x 3 float32 in [0, 1]: the stored values of the channels `reading` asks for (grey
    repeated, RGB, RGBA without alpha by default), scaled by its rule (`io.microscopy`)."""
    shown = display_path(path)
    array, alpha = _stored_values(path)
    return to_network_image(array, reading, shown, alpha)


def _stored_values(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """A file's displayed pixels as H x W x C stored values, and whether its last channel is alpha."""
    shown = display_path(path)
    if is_tiff(path):
        with _tiff_opened(path) as (tif, layout):
            try:
                array = tiff_array(tif, layout, shown)
            except DECODE_ERRORS as exc:
                raise DataError(f"{shown}: image is truncated or corrupted ({exc})") from exc
            return oriented(array, layout.orientation), layout.alpha
    with _opened(path) as opened:
        image = _decode(opened, path)
        alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa")
        return pillow_array(image), alpha


RGBA = 4  # the most channels of a Pillow image: a TIFF's pixel limit counts its channels beyond this


@contextmanager
def _tiff_opened(path: str | os.PathLike) -> Iterator[tuple["tifffile.TiffFile", TiffLayout]]:
    """A TIFF opened by tifffile (header only) and the layout of its one image, refused as
    `_opened` refuses: missing, unreadable, larger than Pillow's decompression-bomb limit
    (the same bound for every format), too elongated, or holding more than one 2-D image."""
    import tifffile  # imported when a TIFF is read: 0.15 s that a folder of PNGs does not need

    shown = display_path(path)
    try:
        tif = tifffile.TiffFile(os.fspath(path))
    except OSError as exc:
        raise DataError(f"{shown}: cannot open ({exc.strerror or exc})") from exc
    except (tifffile.TiffFileError, *DECODE_ERRORS) as exc:
        raise DataError(f"{shown}: image header is corrupted ({exc})") from exc
    with tif:
        try:
            layout = tiff_layout(tif, shown)
        except (tifffile.TiffFileError, *DECODE_ERRORS) as exc:
            raise DataError(f"{shown}: image header is corrupted ({exc})") from exc
        limit = Image.MAX_IMAGE_PIXELS
        pixels = layout.height * layout.width
        if limit is not None and (pixels > limit or pixels * layout.channels > RGBA * limit):
            raise DataError(f"{shown}: refused, too large to decode safely ({layout.width}x{layout.height} with "
                            f"{layout.channels} channel(s); the limit is {limit} pixels of up to {RGBA} channels); "
                            "predict / infer --max-pixels raises the limit")
        _check_aspect((layout.width, layout.height), shown)
        yield tif, layout


def image_from_array(array: np.ndarray, reading: Reading = FIXED) -> np.ndarray:
    """A numpy image (H x W or H x W x C) as `read_image` gives a file: H x W x 3 float32 in
    [0, 1] by the same rules (`io.microscopy`: channels as `reading` says, else grey, RGB or
    RGBA with alpha dropped; its intensity scaling)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or 0 in array.shape:
        raise DataError(f"image array of shape {array.shape}: expected H x W or H x W x C")
    alpha = reading.channels is None and array.shape[2] == 4
    return to_network_image(np.asarray(array), reading, "image array", alpha)


def check_label_mode(mode: str, path: str | os.PathLike) -> None:
    """Refuse image modes that cannot hold instance ids (known from the header alone)."""
    if mode == "F":
        raise DataError(f"{display_path(path)}: label map holds floating-point values; instance ids must be integers")
    if mode not in LABEL_MODES:
        raise DataError(f"{display_path(path)}: label map must be a palette or single-channel image, got mode {mode}")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """H x W int64 instance ids as stored (palette indices for palette PNGs); 0 = background.
    A TIFF may hold 8-, 16- or 32-bit ids, one plane only (`microscopy.tiff_layout`)."""
    if is_tiff(path):
        with _tiff_opened(path) as (tif, layout):
            check_label_mode(layout.mode, path)
            labels = oriented(tiff_array(tif, layout, display_path(path), colors=False)[..., 0], layout.orientation)
            labels = labels.astype(np.int64)
    else:
        with _opened(path) as opened:
            check_label_mode(opened.mode, path)
            image = _decode(opened, path)
            labels = np.asarray(image).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{display_path(path)}: label map holds negative ids (min {labels.min()})")
    return labels


TIFF_SUFFIXES = (".tif", ".tiff")
LABEL_FILE_SUFFIXES = (".png", *TIFF_SUFFIXES)  # label maps instseg reads (masks, other tools' outputs)


def tiff_named(path: str | os.PathLike) -> bool:
    """Whether a path is named as a TIFF (outputs to write, by name; `microscopy.is_tiff` reads a
    file's first bytes)."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES


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
