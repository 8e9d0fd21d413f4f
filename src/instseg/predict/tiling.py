"""Images far larger than the network's input, predicted tile by tile with overlap.

Runs at a fixed `scale` (microscopy) keep every image at its own resolution, so a 4000 x 4000
slide would be one 4000 x 4000 forward pass. Instead the image is cut into overlapping tiles
(`runner.tile` pixels at the working scale, `runner.tile_overlap` shared with each neighbour;
by default the run's training crop size and a quarter of it, `default_tiling`),
each tile goes through the ordinary one-image path, and the instances are stitched into one
label map at the original size. Memory is bounded by a tile's network outputs plus the image and
its label map, whatever the image size.

Stitching, tile by tile in raster order: an instance that shares at least half of its pixels
(or half of what an earlier instance has inside this tile) with an instance already placed is
the same object: it extends that one. An instance cut by an inner tile edge is left to the
neighbouring tile unless its center lies in this tile's own share of the image (its "core").
Everything else is new. So an object cut by a tile border comes out as one instance as long as
it is smaller than the overlap. Every id handed out keeps at least half of its pixels (an
instance that shares less than half with placed ones is new, and only free pixels are written),
so the ids come out 1..N with none missing.

A slide (`predict.slides`) is stitched in a band: tiles come in raster order, so once a row of
tiles is placed, the rows above the next row's start are final, and `Stitcher.release` hands them
on (to the label file on disk) and reuses their memory. Its label map in memory is then one tile
high, whatever the slide's height.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from instseg.errors import ConfigError


def default_tiling(image_size: int) -> tuple[int, int]:
    """Tile and overlap of a run: its training crop size, a quarter of it shared. The network then
    sees the context it was trained on (attention that pools over the whole input judges a
    1024 px tile by other statistics than a 256 px crop): DSB2018 mean AP 0.472 with 256 px
    tiles, 0.454 with 512, 0.450 with 1024 (bench/dsb2018.py --tile)."""
    return image_size, max(16, image_size // 4)


def set_tiling(runner: Any, tile: int | None, overlap: int | None) -> None:
    """A user's tile size and overlap on a runner (its defaults kept where None), or one clear error."""
    tile = runner.tile if tile is None else tile
    overlap = runner.tile_overlap if overlap is None else overlap
    if tile < 32 or not 0 <= overlap <= tile // 2:
        raise ConfigError(f"--tile {tile} --tile-overlap {overlap}: the tile must be at least 32 px and the "
                          "overlap between 0 and half the tile")
    runner.tile, runner.tile_overlap = tile, overlap


def geometry(runner: Any) -> str:
    """How images are sized for the network, in words."""
    if runner.scale is None:
        return f"working size {runner.image_size}px"
    return f"scale {runner.scale:g} (tiles of {runner.tile} px, overlap {runner.tile_overlap}, beyond that)"


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering [0, length), neighbours sharing at least
    `overlap` pixels; the last tile ends at `length`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - overlap) // stride)
    return sorted({min(i * stride, length - tile) for i in range(count)})


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int
    core: tuple[int, int, int, int]  # this tile's own share of the image (y0, y1, x0, x1)

    @property
    def box(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Split [0, length) between tiles at the middles of their overlaps."""
    bounds = [0] + [(starts[i] + tile + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles (in original pixels) of an image, in raster order."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    y_cores, x_cores = _cores(ys, tile, height), _cores(xs, tile, width)
    return [Tile(y, min(y + tile, height), x, min(x + tile, width), (*yc, *xc))
            for y, yc in zip(ys, y_cores) for x, xc in zip(xs, x_cores)]


class Stitcher:
    """The label map of a whole image (or of a band of its rows, `rows`), assembled from tiles'
    label maps placed in raster order."""

    def __init__(self, height: int, width: int, rows: int | None = None) -> None:
        self.height, self.width = height, width
        self.top = 0  # the image row the band's first row is
        self.labels = np.zeros((height if rows is None else min(rows, height), width), dtype=np.int32)
        self.next_id = 1

    def add(self, tile: Tile, local: np.ndarray) -> None:
        """Place one tile's instances (`local`: its label map, ids 1..N, 0 = background)."""
        if tile.y0 < self.top or tile.y1 > self.top + len(self.labels):
            raise ValueError(f"tile rows {tile.y0}..{tile.y1} lie outside the band of rows "
                             f"{self.top}..{self.top + len(self.labels)}")
        placed = self.labels[tile.y0 - self.top:tile.y1 - self.top, tile.x0:tile.x1]
        inside_counts = np.bincount(placed.ravel())
        inner = (tile.y0 > 0, tile.y1 < self.height, tile.x0 > 0, tile.x1 < self.width)  # edges shared with a neighbour
        for instance, box in enumerate(ndimage.find_objects(local), start=1):
            if box is None:
                continue
            mask = local[box] == instance
            target = placed[box]
            owner = self._same_object(target[mask], int(mask.sum()), inside_counts)
            if owner is None:
                if self._cut(box, local.shape, inner) and not self._center_in_core(box, mask, tile):
                    continue
                owner = self.next_id
                self.next_id += 1
            target[mask & (target == 0)] = owner

    def release(self, row: int) -> np.ndarray:
        """The final rows from the band's top up to image row `row` (a copy), their memory
        cleared for the rows below: call it only when no later tile starts above `row`."""
        count = row - self.top
        if not 0 <= count <= len(self.labels):
            raise ValueError(f"cannot release rows {self.top}..{row} of a band of {len(self.labels)} rows")
        done = self.labels[:count].copy()
        self.labels[:len(self.labels) - count] = self.labels[count:]
        self.labels[len(self.labels) - count:] = 0
        self.top = row
        return done

    @staticmethod
    def _same_object(under: np.ndarray, size: int, inside_counts: np.ndarray) -> int | None:
        """The placed instance this one shares at least half of its (or that one's) pixels with."""
        ids, shared = np.unique(under[under > 0], return_counts=True)
        if not len(ids):
            return None
        best = int(shared.argmax())
        if shared[best] >= 0.5 * min(size, int(inside_counts[ids[best]])):
            return int(ids[best])
        return None

    @staticmethod
    def _cut(box: tuple[slice, slice], shape: tuple[int, int], inner: tuple[bool, bool, bool, bool]) -> bool:
        """Whether the instance touches an edge of the tile that a neighbouring tile also covers."""
        ys, xs = box
        return ((inner[0] and ys.start == 0) or (inner[1] and ys.stop == shape[0])
                or (inner[2] and xs.start == 0) or (inner[3] and xs.stop == shape[1]))

    @staticmethod
    def _center_in_core(box: tuple[slice, slice], mask: np.ndarray, tile: Tile) -> bool:
        cy, cx = (float(c.mean()) for c in np.nonzero(mask))
        y, x = tile.y0 + box[0].start + cy, tile.x0 + box[1].start + cx
        y0, y1, x0, x1 = tile.core
        return y0 <= y < y1 and x0 <= x < x1
