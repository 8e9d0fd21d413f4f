"""What instseg writes: label maps (16-bit PNG, or 16- / 32-bit TIFF with the input's pixel
size) and pictures, each atomically, and the checks that recognise a prediction's own outputs
again (`prediction_output_kind`) or find one cut short by a power cut (`*_is_complete`).
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from instseg.errors import DataError
from instseg.io.atomic import atomic_write_bytes
from instseg.io.images import DECODE_ERRORS, display_path, tiff_named

PNG_MAX_ID = 65535  # the largest id a 16-bit PNG holds; larger label maps go to 32-bit TIFF
LABEL_SUFFIXES = {"png": ".png", "tif": ".tif"}  # --label-format -> file suffix


def write_label_map(path: str | os.PathLike, labels: np.ndarray, output: str | None = None, *,
                    durable: bool = True, pixel_size: PixelSize | None = None) -> None:
    """Write instance ids atomically: a `.tif` / `.tiff` path as TIFF (`tiff_label_bytes`), any
    other as a 16-bit greyscale PNG, refused by name when an id does not fit one; `output`,
    `durable`: see `write_image`; `pixel_size` goes into the TIFF (a PNG has no field for it)."""
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("label ids must not be negative")
    if tiff_named(path):
        atomic_write_bytes(path, tiff_label_bytes(labels, output, pixel_size), durable=durable)
        return
    check_label_fits(path, labels)
    write_image(path, Image.fromarray(labels.astype(np.uint16)), output, durable=durable)


def check_label_fits(path: str | os.PathLike, labels: np.ndarray) -> None:
    """A DataError naming the option to pass when `labels` go to a PNG and an id is above what
    16 bits hold (checked before a prediction's pictures are drawn, so nothing is written)."""
    if not tiff_named(path) and labels.size and labels.max() > PNG_MAX_ID:
        raise DataError(f"{display_path(path)}: instance ids reach {int(labels.max())}, more than a 16-bit PNG "
                        f"holds ({PNG_MAX_ID}); pass --label-format tif (a 32-bit TIFF)")


@dataclass(frozen=True)
class PixelSize:
    """The physical size of one pixel, in micrometres (x: along a row, y: down a column)."""

    x: float
    y: float


_MICROMETRES = {"um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
                "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0, "in": 25400.0}  # ImageJ / OME units
_RESOLUTION_UNITS = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # TIFF ResolutionUnit -> micrometres (1: none)


def read_pixel_size(path: str | os.PathLike) -> PixelSize | None:
    """An input's pixel size, for its label TIFF: OME-XML PhysicalSizeX/Y, else the TIFF
    resolution tags (in ImageJ's unit when it wrote them), else the PNG / JPEG dpi; None when the
    file states none or a unit that is not a length (the label map is then written without one)."""
    try:
        if tiff_named(path):
            return _tiff_pixel_size(path)
        with Image.open(path) as image:
            dpi = image.info.get("dpi")
        return _pixel_size(25400.0 / float(dpi[0]), 25400.0 / float(dpi[1])) if dpi and min(dpi) > 0 else None
    except (*DECODE_ERRORS, KeyError, TypeError, ZeroDivisionError):  # metadata only: the pixels were read
        return None


def _tiff_pixel_size(path: str | os.PathLike) -> PixelSize | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            if "PhysicalSizeX" in pixels:
                unit = _MICROMETRES.get(str(pixels.get("PhysicalSizeXUnit", "µm")).lower())
                y = pixels.get("PhysicalSizeY", pixels["PhysicalSizeX"])
                return None if unit is None else _pixel_size(float(pixels["PhysicalSizeX"]) * unit, float(y) * unit)
        tags = tif.pages.first.tags
        if "XResolution" not in tags:
            return None
        unit = (_MICROMETRES.get(str((tif.imagej_metadata or {}).get("unit", "")).lower())
                or _RESOLUTION_UNITS.get(int(tags.valueof("ResolutionUnit", 2))))
        x = tags["XResolution"].value
        y = tags["YResolution"].value if "YResolution" in tags else x
        return None if unit is None else _pixel_size(unit * x[1] / x[0], unit * y[1] / y[0])


def _pixel_size(x: float, y: float) -> PixelSize | None:
    """Finite, positive sizes only (a zero resolution tag means "not stated")."""
    return PixelSize(x, y) if np.isfinite([x, y]).all() and min(x, y) > 0 else None


def tiff_label_bytes(labels: np.ndarray, output: str | None = None, pixel_size: PixelSize | None = None) -> bytes:
    """A label map as one deflate-compressed TIFF page: uint16 while the ids fit (Fiji, QuPath
    and napari open it as a label image), uint32 above (ImageJ reads that as 32-bit). The pixel size
    is written as resolution tags in centimetres, which ImageJ shows in micrometres; `output` goes
    into the description (`{"instseg.output": kind}`, read by `prediction_output_kind`)."""
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) <= PNG_MAX_ID else np.uint32
    extra: dict = {}
    if pixel_size is not None:
        extra = {"resolution": (1e4 / pixel_size.x, 1e4 / pixel_size.y), "resolutionunit": "CENTIMETER"}
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels.astype(dtype), compression="zlib", software="instseg",
                     metadata={OUTPUT_KEY: output} if output is not None else {}, **extra)
    return buffer.getvalue()


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
    """What prediction output a PNG or TIFF is (`label`, `overlay`, ...), None for any other
    file; reads the header chunks (the TIFF's first page's tags) only."""
    if tiff_named(path):
        return _tiff_output_kind(path)
    try:
        with Image.open(path) as image:
            return image.info.get(OUTPUT_KEY) if image.format == "PNG" else None
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _tiff_output_kind(path: str | os.PathLike) -> str | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            metadata = tif.shaped_metadata
    except (OSError, ValueError, KeyError, IndexError):
        return None
    kind = metadata[0].get(OUTPUT_KEY) if metadata else None
    return kind if isinstance(kind, str) else None


def tiff_is_complete(path: str | os.PathLike) -> bool:
    """Whether a TIFF's first page lies whole in the file (one cut short by a power cut does not)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page, size = tif.pages.first, tif.filehandle.size
            return all(0 < offset and offset + count <= size
                       for offset, count in zip(page.dataoffsets, page.databytecounts))
    except (OSError, ValueError, KeyError, IndexError):
        return False


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
