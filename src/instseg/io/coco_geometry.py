"""The geometry of COCO annotations, checked before pycocotools' C code sees it: that code trusts
its input (a polygon at +-5e8 px in a 96 x 128 image made it allocate 22 GB; an RLE string whose
runs overshoot the image writes past its buffer). Coordinates must be finite numbers; polygons
may reach past the border (the rasteriser keeps the part inside, so a point a pixel out is
clipped) but not more than an image side, nor trace a longer outline than the image has pixels;
boxes may reach BOX_SLACK past it; RLE must be the image's size and its runs must cover it exactly.

Each check gives the reason as one line, or None; with the image size unknown (None, a JSON
without width and height) only the form is checked, and the rest once the image file is read.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

from instseg.limits import is_int, is_number

BOX_SLACK = 1.0  # pixels a box may reach past the image border (exports round coordinates)
RLE_DIGITS = 6  # characters of one compressed RLE run pycocotools decodes without overflowing a C int
_SHORT = reprlib.Repr()  # JSON values in messages: a few items and 40 characters, however big or deep
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 2, 6, 4, 40, 40, 40


def short(value: Any) -> str:
    """A JSON value as a message shows it: a few items, 40 characters, never a recursion."""
    return _SHORT.repr(value)


def has_mask(ann: dict) -> bool:
    segmentation = ann.get("segmentation")
    return bool(segmentation) and segmentation != [[]]


def geometry_problem(ann: dict, height: int | None, width: int | None) -> tuple[str, str] | None:
    """(the field, why) an annotation's bbox or segmentation cannot be drawn in a height x width
    image (None: not known yet, form only), or None."""
    bbox = ann.get("bbox")
    if bbox is not None:
        problem = _bbox_problem(bbox, height, width)
        if problem is not None:
            return "bbox", problem
    if has_mask(ann):
        problem = _segmentation_problem(ann["segmentation"], height, width)
        return None if problem is None else ("segmentation", problem)
    return None if bbox is not None else ("segmentation", "neither a segmentation nor a bbox")


def _bbox_problem(bbox: Any, height: int | None, width: int | None) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        return f"bbox {short(bbox)} is not [x, y, width, height] (four finite numbers)"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {short(bbox)} has a negative size"
    if width is not None and (x < -BOX_SLACK or y < -BOX_SLACK or x + w > width + BOX_SLACK
                              or y + h > height + BOX_SLACK):
        return f"bbox {short(bbox)} lies outside the {width}x{height} image"
    return None


def _segmentation_problem(segmentation: Any, height: int | None, width: int | None) -> str | None:
    if isinstance(segmentation, list):
        for index, polygon in enumerate(segmentation):
            problem = polygon_problem(polygon, height, width)
            if problem is not None:
                return problem if len(segmentation) == 1 else f"polygon {index}: {problem}"
        return None
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        return "segmentation is neither polygons nor RLE ({'size', 'counts'})"
    size, counts = segmentation.get("size"), segmentation["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        return f"RLE size {short(size)} is not [height, width]"
    if height is not None and size != [height, width]:
        return f"RLE size {short(size)} differs from the image's [{height}, {width}] (height, width)"
    if isinstance(counts, list):
        if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
            return "uncompressed RLE counts must be whole numbers that add up to height x width"
        return None
    if not (isinstance(counts, str) and counts):
        return "RLE counts must be a list or a non-empty string"
    runs = rle_string_runs(counts)
    if runs is None:
        return (f"RLE counts {short(counts)} are not a COCO RLE string (characters '0' to 'o', at most "
                f"{RLE_DIGITS} a run, the last one complete)")
    if runs.min() < 0 or int(runs.sum()) != size[0] * size[1]:
        return (f"compressed RLE runs cover {int(runs.sum())} pixels (smallest run {int(runs.min())}); they must "
                f"cover height x width = {size[0] * size[1]} exactly")
    return None


def polygon_problem(polygon: Any, height: int | None, width: int | None) -> str | None:
    """Why a polygon cannot be rasterised in a height x width image (None: form only), or None.

    pycocotools walks every edge at 5x resolution and holds every step: its memory grows with
    the outline's length, so points more than an image side past the border (an outline of
    another image, or another scale) and outlines longer than the image has pixels are refused;
    a point slightly outside is fine, the rasteriser keeps the part inside the image.
    """
    if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0):
        return "a polygon must be a list of at least 3 x, y pairs"
    bad = next((i for i, v in enumerate(polygon) if not is_number(v)), None)
    if bad is not None:
        return f"coordinate {bad} of the polygon is {short(polygon[bad])}, not a finite number"
    if height is None:
        return None
    for i in range(0, len(polygon), 2):
        x, y = polygon[i], polygon[i + 1]
        if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            return (f"polygon point ({short(x)}, {short(y)}) lies more than an image side outside the "
                    f"{width}x{height} image")
    xy = np.asarray(polygon, np.float64).reshape(-1, 2)
    length = float(np.abs(xy - np.roll(xy, 1, axis=0)).max(axis=1).sum())
    if length > height * width:
        return (f"the polygon's outline is {length:.0f} px long, longer than the {width}x{height} image has pixels "
                f"({height * width})")
    return None


def rle_string_runs(counts: str) -> np.ndarray | None:
    """The runs of a compressed COCO RLE string, read as pycocotools' `rleFrString` reads them (6 bits
    a character from '0', 5 of value and a continuation bit; from the third, each run is stored as
    its difference to the run two before), or None where the C reader would go wrong: a character
    outside '0'..'o', a run longer than RLE_DIGITS characters, a last run left unfinished (it reads
    past the string). pycocotools has no safe reader of its own, and decodes unchecked runs past the
    end of its buffer."""
    if not counts.isascii():
        return None
    codes = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if codes.min() < 0 or codes.max() > 63:
        return None
    ends = np.flatnonzero((codes & 0x20) == 0)
    if ends.size == 0 or ends[-1] != codes.size - 1:
        return None
    starts = np.concatenate(([0], ends[:-1] + 1))
    digits = ends - starts + 1
    if digits.max() > RLE_DIGITS:
        return None
    shifts = 5 * (np.arange(codes.size) - np.repeat(starts, digits))
    values = np.add.reduceat((codes & 0x1F) << shifts, starts)
    values -= np.where(codes[ends] & 0x10, np.left_shift(1, 5 * digits), 0)  # the sign bit of the last digit
    runs = values.copy()
    runs[1::2], runs[2::2] = np.cumsum(values[1::2]), np.cumsum(values[2::2])
    return runs
