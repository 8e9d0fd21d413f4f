"""Whole slides: TIFFs too large to decode whole, read region by region straight from disk.

A TIFF over `limits.SLIDE_PIXELS` is a slide. Its pixels are never decoded at once: `Slide.read`
returns one region, decoding only the TIFF tiles or strips that overlap it (tifffile's segment
reader and decoder), or reading just its rows where the file is stored uncompressed in one piece
(the region's rows, not a memory map: the pages of a map stay in the process's resident memory).
Memory is then the region plus the segments under it, whatever the slide's size. Channels and
intensities go through `io.microscopy.to_network_image`, as every image read whole does, so a
region reads as that part of the whole image would; `percentile` scaling needs statistics of the
whole image, so it is refused here (a run trained that way cannot predict slides).

A slide must hold one 2-D plane (grey, RGB, RGBA, or the channels its run reads: `Reading`; uint8
or uint16), stored as displayed: anything else is refused by name, never cut to a part.
`max_pixels` is the other side: images that must be decoded whole (PNG, JPEG, smaller TIFFs) are
refused above Pillow's decompression-bomb limit unless `--max-pixels` raises it.
"""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from instseg import limits
from instseg.errors import ConfigError, DataError
from instseg.io.images import display_path
from instseg.io.microscopy import FIXED, Reading, is_tiff, tiff_layout, to_network_image

SLIDE_DTYPES = (np.uint8, np.uint16)
# A compressed slide is decoded one segment at a time: one larger than this (a slide written as a
# single strip) would be decoded whole, which is what reading it as a slide avoids.
MAX_SEGMENT_BYTES = 2**26
_DECODE_ERRORS = (ValueError, NotImplementedError, OSError, zlib.error, IndexError, KeyError)


@dataclass(frozen=True)
class SlideHeader:
    """What a TIFF's header says about it as a slide."""

    height: int
    width: int

    def describe(self) -> str:
        return f"{self.width}x{self.height} px"


def slide_header(path: str | os.PathLike) -> SlideHeader | None:
    """The size of a TIFF over `limits.SLIDE_PIXELS` (header only), None for any other file
    (smaller, not a TIFF, or a TIFF tifffile cannot parse: the ordinary reader reports those)."""
    import tifffile

    if not is_tiff(path):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            axes, shape = tif.series[0].axes, tif.series[0].shape
    except (tifffile.TiffFileError, *_DECODE_ERRORS):
        return None
    if "Y" not in axes or "X" not in axes:
        return None
    height, width = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    return SlideHeader(height, width) if height * width > limits.SLIDE_PIXELS else None


class Slide:
    """An open slide: `read(y0, y1, x0, x1)` gives that region as H x W x 3 float32 in [0, 1],
    its channels and intensities as `reading` says. Use it as a context manager (it holds the file open)."""

    def __init__(self, path: str | os.PathLike, reading: Reading = FIXED) -> None:
        import tifffile

        self.path, self.shown, self.reading = Path(path), display_path(path), reading
        if reading.normalize != "fixed":
            raise DataError(f"{self.shown}: a slide is read tile by tile, and --normalize {reading.normalize} needs "
                            "the statistics of the whole image; predict it with a run that scales by dtype (fixed)")
        try:
            self.tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
            raise DataError(f"{self.shown}: not a readable TIFF ({exc})") from exc
        try:
            self.layout = tiff_layout(self.tif, self.shown)
            self.contiguous = self._check_page()
        except (DataError, tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
            self.tif.close()
            raise exc if isinstance(exc, DataError) else DataError(f"{self.shown}: TIFF header is corrupted ({exc})")
        self.page = self.tif.pages.first
        self.height, self.width, self.samples = self.layout.height, self.layout.width, self.layout.channels
        self.dtype = np.dtype(self.page.dtype).newbyteorder(self.tif.byteorder)

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.tif.close()

    def _check_page(self) -> bool:
        """Whether the slide is stored uncompressed in one piece; a DataError for what cannot be read
        tile by tile (`microscopy.tiff_layout` has refused files of more than one plane already)."""
        page, layout = self.tif.pages.first, self.layout
        if layout.dtype not in SLIDE_DTYPES:
            raise DataError(f"{self.shown}: a slide of {layout.dtype} pixels; tile-by-tile prediction reads uint8 "
                            "or uint16 slides: convert it")
        if layout.orientation != 1 or layout.axes not in ("YX", "YXS"):
            raise DataError(f"{self.shown}: a slide stored turned (TIFF orientation {layout.orientation}) or with "
                            f"axes {layout.axes}; tile-by-tile prediction reads slides stored as displayed, rows "
                            "then columns then channels: rewrite it")
        contiguous = bool(page.is_contiguous) and int(page.compression) == 1 and not page.is_tiled
        if not contiguous and int(np.prod(page.chunks)) * page.dtype.itemsize > MAX_SEGMENT_BYTES:
            raise DataError(f"{self.shown}: compressed in segments of {'x'.join(map(str, page.chunks))} values, "
                            f"over {MAX_SEGMENT_BYTES >> 20} MiB each decoded, so it cannot be read tile by tile: "
                            "rewrite it tiled (e.g. tifffile.imwrite(..., tile=(512, 512)) or bfconvert -tilex 512)")
        return contiguous

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0..y1, columns x0..x1 as H x W x 3 float32 in [0, 1] (`io.microscopy`'s scaling)."""
        stored = self._rows(y0, y1)[:, x0:x1] if self.contiguous else self._segments(y0, y1, x0, x1)
        return to_network_image(stored, self.reading, self.shown, self.layout.alpha)

    def _rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0..y1 (all columns) of an uncompressed slide stored in one piece, read from the file."""
        row_values = self.width * self.samples
        handle = self.tif.filehandle
        try:
            handle.seek(self.page.dataoffsets[0] + y0 * row_values * self.dtype.itemsize)
            data = handle.read_array(self.dtype, (y1 - y0) * row_values)
        except _DECODE_ERRORS as exc:
            raise DataError(f"{self.shown}: rows {y0}..{y1} cannot be read ({exc}); the file is cut short or damaged") \
                from exc
        return data.reshape(y1 - y0, self.width, self.samples).astype(self.dtype.newbyteorder("="), copy=False)

    def _segments(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region decoded from the tiles or strips that overlap it, one segment at a time."""
        seg_h, seg_w = int(self.page.chunks[0]), int(self.page.chunks[1])
        across = int(self.page.chunked[1])
        indices = [row * across + col for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1)
                   for col in range(x0 // seg_w, (x1 - 1) // seg_w + 1)]
        region = np.zeros((y1 - y0, x1 - x0, self.samples), dtype=self.dtype.newbyteorder("="))
        offsets, counts = self.page.dataoffsets, self.page.databytecounts
        try:
            segments = self.tif.filehandle.read_segments([offsets[i] for i in indices], [counts[i] for i in indices],
                                                         indices=indices, sort=True)
            for data, index in segments:
                segment, position, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
                if segment is not None:
                    _paste(region, segment[0], int(position[2]), int(position[3]), y0, x0)
        except _DECODE_ERRORS as exc:
            raise DataError(f"{self.shown}: a tile of rows {y0}..{y1}, columns {x0}..{x1} cannot be decoded "
                            f"({exc})") from exc
        return region


def _paste(region: np.ndarray, segment: np.ndarray, top: int, left: int, y0: int, x0: int) -> None:
    """Copy the part of a decoded segment (h x w x samples, at image row `top`, column `left`)
    that lies inside the region starting at (y0, x0)."""
    ry0, rx0 = max(top, y0), max(left, x0)
    ry1, rx1 = min(top + segment.shape[0], y0 + region.shape[0]), min(left + segment.shape[1], x0 + region.shape[1])
    if ry0 < ry1 and rx0 < rx1:
        region[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0] = segment[ry0 - top:ry1 - top, rx0 - left:rx1 - left]


# -- images decoded whole -----------------------------------------------------------------------

BYTES_PER_DECODED_PIXEL = 12  # an image is held as H x W x 3 float32 once decoded


def check_max_pixels(pixels: int) -> int:
    """`--max-pixels`: at least 1, and no more pixels than this machine's memory can hold decoded
    (12 bytes each as float RGB), so the limit it lifts still refuses what cannot fit."""
    memory = physical_memory()
    most = memory // BYTES_PER_DECODED_PIXEL
    if not 1 <= pixels <= most:
        raise ConfigError(f"--max-pixels {pixels}: must be between 1 and {most} (an image is decoded as 12 bytes per "
                          f"pixel; this machine has {memory / 2**30:.0f} GiB of memory)")
    return pixels


def physical_memory() -> int:
    """This machine's memory in bytes (POSIX sysconf)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@contextmanager
def max_pixels(pixels: int | None) -> Iterator[None]:
    """Images decoded whole may have up to `pixels` pixels inside the block (None: Pillow's own
    decompression-bomb limit, 89.5 Mpx, which `io.images` enforces as an error)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    if pixels is not None:
        Image.MAX_IMAGE_PIXELS = check_max_pixels(pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
