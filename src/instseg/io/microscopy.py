"""Microscopy input: which planes and channels of a file feed the network, and how intensities are scaled.

One set of rules for every reader and every Pillow version. A file is decoded to numpy with its
stored dtype (TIFF and OME-TIFF by tifffile: pages, channels and axes; other formats by Pillow,
whose modes I, I;16, I;16B, F ... all become plain arrays), then ONE function scales it to [0, 1]:

    fixed        by dtype: bool as 0 / 1, uint8 / 255, uint16 / 65535; int16 / int32 / uint32
                 (Pillow's mode I holds 16-bit PNGs under Pillow 10) are 16-bit values in a wider
                 container: / 65535, values outside 0..65535 refused; float: [0, 1] as is, other
                 values refused. Never by an image's own maximum, so a dim image stays dim.
    percentile   per image and channel, the 1st and 99.8th percentiles to 0 and 1, clipped
                 (csbdeep's `normalize`): camera data of any bit depth, floats after deconvolution.

A file with more planes than one 2-D image (Z, T, pages, several series) is refused naming them;
a file with channels other than grey, RGB or RGBA is refused unless `channels` says which feed the
network's three inputs (one channel is repeated, two leave the third input at 0). numpy, Pillow
and tifffile only: the ONNX path reads with this too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from instseg import limits
from instseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tifffile
    from PIL import Image

NORMALIZE = ("fixed", "percentile")
PERCENTILES = (1.0, 99.8)  # csbdeep's defaults for fluorescence microscopy
MAX_CHANNELS = 3  # the network's inputs
MAX_CHANNEL_INDEX = 2**16 - 1  # a TIFF stores samples per pixel in 16 bits
SIXTEEN_BIT = 65535.0
CHANNEL_AXES = ("C", "S")  # tifffile's axes that hold channels (S: samples per pixel, RGB)


@dataclass(frozen=True)
class Reading:
    """How a run reads its images; recorded with the model, so prediction reads the same way.
    `channels`: indices of the file's channels for the network's inputs (None: grey, RGB or RGBA)."""

    normalize: str = "fixed"
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ConfigError(f"--normalize {self.normalize!r}: expected one of {', '.join(NORMALIZE)}")
        if self.channels is not None:
            check_channels(self.channels)

    @classmethod
    def of(cls, record: Any) -> "Reading":
        """The reading of a TrainConfig (or its saved mapping), model record or ONNX metadata; one
        from before the fields existed (absent, or None) reads by dtype, as instseg always did."""
        get = record.get if isinstance(record, Mapping) else lambda key: getattr(record, key, None)
        channels = get("channels")
        return cls(get("normalize") or "fixed", None if channels is None else tuple(channels))


FIXED = Reading()


def valid_channels(value: Any) -> bool:
    """Whether `value` is 1 to 3 channel indices, each 0 or more (the file decides how many it has)."""
    return (isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_CHANNELS
            and all(limits.is_int_in(c, (0, MAX_CHANNEL_INDEX)) for c in value))


def check_channels(channels: tuple[int, ...]) -> None:
    """`channels` as `valid_channels` says, or a ConfigError naming --channels."""
    if not valid_channels(channels):
        raise ConfigError(f"--channels {','.join(map(str, channels))}: expected 1 to {MAX_CHANNELS} channel "
                          f"indices from 0 to {MAX_CHANNEL_INDEX}, e.g. 0 (one channel repeated) or 2,1,0")


def parse_channels(text: str | None) -> tuple[int, ...] | None:
    """`--channels 0` or `--channels 1,0`: the indices, None when not given."""
    if text is None or not text.strip():
        return None
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--channels {text!r}: expected comma-separated channel indices, e.g. 0 or 2,1,0") from None
    check_channels(channels)
    return channels


# -- intensities --------------------------------------------------------------------------------

def scale_intensities(array: np.ndarray, normalize: str, shown: str) -> np.ndarray:
    """H x W x C float32 in [0, 1] from stored values by the rule `normalize` (module docstring);
    `shown` names the file in errors."""
    if normalize == "percentile":
        return percentile_scaled(array)
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return _divided(array, 255.0)
    if array.dtype == np.uint16:
        return _divided(array, SIXTEEN_BIT)
    if np.issubdtype(array.dtype, np.integer):
        return _divided(_sixteen_bit(array, shown), SIXTEEN_BIT)
    if np.issubdtype(array.dtype, np.floating):
        return _unit_floats(array, shown)
    raise DataError(f"{shown}: pixels of type {array.dtype} are not supported (expected integers or floats)")


def _divided(array: np.ndarray, scale: float) -> np.ndarray:
    """array / scale as float32, dividing in place: an 88 Mpx photo needs one float copy, not two."""
    image = array.astype(np.float32)
    image /= scale
    return image


def _sixteen_bit(array: np.ndarray, shown: str) -> np.ndarray:
    """Wider integers holding 16-bit values, or a DataError saying what to do with others."""
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if low < 0 or high > SIXTEEN_BIT:
        raise DataError(f"{shown}: {array.dtype} values {low}..{high} lie outside 0..65535, which fixed scaling "
                        "reads as 16-bit; train with --normalize percentile")
    return array


def _unit_floats(array: np.ndarray, shown: str) -> np.ndarray:
    """Float pixels already in [0, 1], or a DataError naming the range found."""
    image = array.astype(np.float32)
    finite = bool(np.isfinite(image).all())
    if not finite or image.min(initial=0.0) < 0 or image.max(initial=0.0) > 1:
        found = "non-finite values" if not finite else f"values {image.min():.3g}..{image.max():.3g}"
        raise DataError(f"{shown}: floating-point image with {found}; fixed scaling takes floats in [0, 1]: "
                        "train with --normalize percentile")
    return image


def percentile_scaled(array: np.ndarray) -> np.ndarray:
    """Each channel's 1st / 99.8th percentiles to 0 / 1, clipped to [0, 1]; a flat channel is 0.
    Non-finite pixels are left out of the percentiles and become 0."""
    image = array.astype(np.float32)
    for c in range(image.shape[2]):
        channel = image[..., c]
        finite = np.isfinite(channel)
        if not finite.any():
            channel[...] = 0.0
            continue
        low, high = _percentiles(array[..., c] if finite.all() else array[..., c][finite])
        channel[~finite] = low
        channel -= low
        channel *= 0.0 if high <= low else 1.0 / (high - low)
    return np.clip(image, 0.0, 1.0, out=image)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """`np.percentile(values, PERCENTILES)` (linear interpolation). 8- and 16-bit integers are
    counted in a histogram instead: exact too, and 10x faster than partitioning 4 Mpx of floats."""
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.dtype not in (np.uint8, np.uint16):
        low, high = np.percentile(values, PERCENTILES)
        return float(low), float(high)
    below = np.cumsum(np.bincount(values.ravel()))  # below[v]: how many values are <= v
    last = int(below[-1]) - 1

    def order_statistic(k: int) -> int:  # the k-th smallest value, from 0
        return int(np.searchsorted(below, k, side="right"))

    found = []
    for p in PERCENTILES:
        position = p / 100 * last
        k = int(position)
        a, b = order_statistic(k), order_statistic(min(k + 1, last))
        found.append(a + (position - k) * (b - a))
    return found[0], found[1]


# -- channels -----------------------------------------------------------------------------------

def chosen_channels(array: np.ndarray, channels: tuple[int, ...] | None, shown: str, alpha: bool) -> np.ndarray:
    """The H x W x 1, 2 or 3 channels of an H x W x C array that feed the network: `channels`,
    else grey or RGB without alpha (`alpha`: the last channel is alpha); any other count is
    refused naming --channels."""
    count = array.shape[2]
    if channels is None:
        if alpha:
            array, count = array[..., :-1], count - 1
        if count in (1, 3):
            return array
        raise DataError(f"{shown}: {count} channels; choose the ones to use with --channels (e.g. --channels 0 "
                        "for one channel, or --channels 0,1)")
    missing = [c for c in channels if c >= count]
    if missing:
        raise DataError(f"{shown}: --channels {','.join(map(str, channels))} asks for channel {missing[0]} but the "
                        f"file has {count} (0..{count - 1})")
    return array[..., list(channels)]


def three_inputs(image: np.ndarray) -> np.ndarray:
    """H x W x 3 from 1 channel (repeated), 2 (the third input 0) or 3 (as they are)."""
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 2:
        return np.concatenate([image, np.zeros_like(image[..., :1])], axis=2)
    return image


def to_network_image(array: np.ndarray, reading: Reading, shown: str, alpha: bool = False) -> np.ndarray:
    """H x W x 3 float32 in [0, 1] from an H x W or H x W x C array of stored values: channels
    chosen, scaled (percentiles per chosen channel), then spread over the network's 3 inputs."""
    if array.ndim == 2:
        array = array[..., None]
    chosen = chosen_channels(array, reading.channels, shown, alpha)
    return three_inputs(scale_intensities(chosen, reading.normalize, shown))


# -- TIFF / OME-TIFF ----------------------------------------------------------------------------

# tifffile logs what it finds wrong in a damaged file; the DataError that follows says it once,
# so its records do not reach stderr by Python's last-resort handler (an app's own handlers still get them).
logging.getLogger("tifffile").addHandler(logging.NullHandler())
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def is_tiff(path: str | os.PathLike) -> bool:
    """Whether a file starts as a TIFF does (by content, not suffix: a `.tif` may be a PNG)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in TIFF_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class TiffLayout:
    """A TIFF's one 2-D image as its header describes it: size, channels, dtype, and where
    they lie in tifffile's array of its first series (`axes`, `shape`)."""

    height: int
    width: int
    channels: int
    dtype: np.dtype
    axes: str
    shape: tuple[int, ...]
    photometric: int  # the TIFF's color space (tifffile.PHOTOMETRIC): 1 grey, 2 RGB, 3 palette ...
    alpha: bool  # RGB with an extra alpha sample
    orientation: int  # the TIFF Orientation tag (EXIF numbering), 1 when absent

    @property
    def rgb(self) -> bool:
        return self.photometric == RGB_PHOTOMETRIC

    @property
    def mode(self) -> str:
        """A Pillow-like name for headers: L, I;16, I, F, 1 for one channel, else RGB / RGBA / 'N x uint16'."""
        if self.channels == 1 and self.photometric == PALETTE_PHOTOMETRIC:
            return "P"
        if self.channels == 1:
            return {"uint8": "L", "uint16": "I;16", "bool": "1"}.get(self.dtype.name, "F" if self.dtype.kind == "f"
                                                                     else "I")
        if self.rgb and self.dtype == np.uint8 and self.channels == 3 + self.alpha:
            return "RGBA" if self.alpha else "RGB"
        return f"{self.channels} x {self.dtype.name}"


def tiff_layout(tif: "tifffile.TiffFile", shown: str) -> TiffLayout:
    """The layout of a TIFF holding one 2-D image (grey or channels); a file with more (pages, Z,
    time, several series) is refused naming what it holds: instseg never uses part of a file silently."""
    if not tif.series:
        raise DataError(f"{shown}: image header is corrupted (no image in the TIFF)")
    if len(tif.series) != 1:
        sizes = ", ".join(f"{'x'.join(map(str, s.shape))} {s.axes}" for s in tif.series[:4])
        raise DataError(f"{shown}: holds {len(tif.series)} images ({sizes}{', ...' if len(tif.series) > 4 else ''}); "
                        "instseg reads files of one image: save each as its own file")
    series = tif.series[0]
    axes, shape = series.axes, tuple(series.shape)
    planar = "YX" + "".join(CHANNEL_AXES)
    extra = [f"{n} along {a} ({_AXIS_NAMES.get(a, a)})" for a, n in zip(axes, shape) if a not in planar and n > 1]
    held = [(a, n) for a, n in zip(axes, shape) if a in CHANNEL_AXES and n > 1]
    if len(held) > 1:
        extra.append(f"{held[1][1]} along {held[1][0]} beside {held[0][1]} along {held[0][0]}")
    if extra or "Y" not in axes or "X" not in axes:
        raise DataError(f"{shown}: {'; '.join(extra) or 'no Y and X axes'} (axes {axes}, shape "
                        f"{'x'.join(map(str, shape))}); instseg segments one 2-D image per file: save one plane, or "
                        "a projection, per file")
    page = series.pages[0] if series.pages else tif.pages[0]
    orientation = page.tags.get(ORIENTATION_TAG)
    photometric = int(page.photometric)
    return TiffLayout(height=shape[axes.index("Y")], width=shape[axes.index("X")],
                      channels=held[0][1] if held else 1, dtype=np.dtype(series.dtype), axes=axes, shape=shape,
                      photometric=photometric, alpha=photometric == RGB_PHOTOMETRIC and bool(page.extrasamples),
                      orientation=int(orientation.value) if orientation is not None else 1)


ORIENTATION_TAG = 274
GREY_PHOTOMETRIC, RGB_PHOTOMETRIC, PALETTE_PHOTOMETRIC = 1, 2, 3
_AXIS_NAMES = {"Z": "depth", "T": "time", "I": "pages", "Q": "pages", "R": "tiles", "L": "lifetime",
               "E": "lambda", "H": "phases", "A": "angles", "P": "phases", "V": "views", "M": "mosaic"}


def tiff_array(tif: "tifffile.TiffFile", layout: TiffLayout, shown: str, colors: bool = True) -> np.ndarray:
    """The image as H x W x C stored values (native byte order). `colors`: a one-page TIFF in another
    color space than grey or RGB (palette, CMYK, YCbCr, white-is-zero) is decoded by Pillow as the
    colors it shows; else (label maps) as its stored values, palette indices included. A one-page
    TIFF whose compression tifffile cannot decode without imagecodecs (LZW, JPEG) is decoded by
    Pillow too: the same values."""
    single = len(tif.pages) == 1
    if colors and single and layout.photometric not in (GREY_PHOTOMETRIC, RGB_PHOTOMETRIC):
        data = _pillow_decoded(tif.filehandle.path, shown, None)
    else:
        try:
            data = _yx_first(tif.series[0].asarray(), layout)
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            if not single:
                raise DataError(f"{shown}: {exc} to decode its {len(tif.pages)} pages; install imagecodecs") from exc
            data = _pillow_decoded(tif.filehandle.path, shown, exc)
    return data.astype(data.dtype.newbyteorder("="), copy=False)


def _yx_first(data: np.ndarray, layout: TiffLayout) -> np.ndarray:
    """tifffile's array of the series as H x W x C: axes of length 1 dropped, channels last."""
    kept = [i for i, (a, n) in enumerate(zip(layout.axes, layout.shape)) if a in "YX" or n > 1]
    axes = [layout.axes[i] for i in kept]
    data = data.reshape([layout.shape[i] for i in kept])
    data = data.transpose([axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"])
    return data if data.ndim == 3 else data[..., None]


def _pillow_decoded(path: str, shown: str, exc: Exception | None) -> np.ndarray:
    """A one-page TIFF's pixels decoded by Pillow (which bundles LZW and JPEG, and converts color
    spaces), stored dtype kept; `exc`: why tifffile did not decode it, if it failed."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return pillow_array(image)
    except (OSError, ValueError) as fallback:
        why = f"{exc}, and Pillow cannot decode it either" if exc is not None else "Pillow cannot decode it"
        raise DataError(f"{shown}: {why} ({fallback}); install imagecodecs") from fallback


def oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """An H x W (x C) array turned as EXIF / TIFF orientation `orientation` says to display it
    (Pillow's `ImageOps.exif_transpose`, on numpy)."""
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
             8: lambda a: np.rot90(a, 1)}
    return turns[orientation](array) if orientation in turns else array


# -- Pillow -------------------------------------------------------------------------------------

# Pillow modes whose pixels are converted to RGB (palette colors, other color spaces); the rest
# become arrays of their stored values.
_CONVERTED_MODES = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")


def pillow_array(image: "Image.Image") -> np.ndarray:
    """A decoded Pillow image as H x W x C stored values: I;16 / I;16B as uint16, I as int32, F as
    float32, 1 as bool, L / LA / RGB / RGBA as uint8; palettes and other color spaces as RGB."""
    if image.mode in _CONVERTED_MODES:
        image = image.convert("RGBA" if "A" in image.mode or "a" in image.mode else "RGB")
    array = np.asarray(image)
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    return array[..., None] if array.ndim == 2 else array
