"""Label-map clean-up shared by every clustering method (numpy + scipy.ndimage).

After clustering: drop instances under `min_size` pixels, fill holes (a background region
enclosed by one instance joins it), relabel 1..N. `split_pieces` makes every instance one
connected region, for methods whose clusters may scatter over the image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Map the non-zero ids present to 1..N in increasing order of id."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instances with fewer than `min_size` pixels to background."""
    if min_size <= 1 or not labels.any():
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def neighbour_views(x: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(here, there) views covering every ordered pair of 4-neighbouring pixels."""
    return (x[1:], x[:-1]), (x[:-1], x[1:]), (x[:, 1:], x[:, :-1]), (x[:, :-1], x[:, 1:])


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Background regions that do not touch the border and border one instance only join it."""
    background = labels == 0
    if background.all() or not background.any():
        return labels
    comp, _ = ndimage.label(background)  # 4-connected background regions, 1..n
    pairs = [np.stack([comp_here[edge], label_there[edge]], 1)
             for (bg_here, bg_there), (comp_here, _), (_, label_there)
             in zip(neighbour_views(background), neighbour_views(comp), neighbour_views(labels))
             for edge in [bg_here & ~bg_there]]  # (hole candidate, instance next to it)
    pairs = np.unique(np.concatenate(pairs), axis=0)
    ids, neighbours = np.unique(pairs[:, 0], return_counts=True)
    border = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    enclosed = ids[(neighbours == 1) & ~np.isin(ids, border)]
    if not len(enclosed):
        return labels
    owners = pairs[np.isin(pairs[:, 0], enclosed)]  # one row per hole, sorted by component id
    filled = labels.copy()
    hole = np.isin(comp, owners[:, 0])
    filled[hole] = owners[np.searchsorted(owners[:, 0], comp[hole]), 1]
    return filled


def split_pieces(labels: np.ndarray, fragment: float = 0.25) -> np.ndarray:
    """Every instance as one 4-connected region: an instance in several pieces keeps its largest
    piece; pieces of at least `fragment` x that size become instances of their own, smaller
    ones join the instance of the nearest pixel kept (they are the rims and specks that
    clustering leaves, not objects). Ids of the result are not sequential."""
    out = labels.astype(np.int32, copy=True)
    next_id = int(labels.max(initial=0)) + 1
    for instance, box in enumerate(ndimage.find_objects(out), start=1):
        if box is None:
            continue
        parts, count = ndimage.label(labels[box] == instance)
        if count <= 1:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        view = out[box]
        for part in np.flatnonzero(np.arange(count) != sizes.argmax()) + 1:
            big = sizes[part - 1] >= fragment * sizes.max()
            view[parts == part] = next_id if big else 0
            next_id += int(big)
    return _absorb(out, labels > 0)


def _absorb(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Foreground pixels left without an instance take the id of the nearest labelled pixel."""
    orphans = foreground & (labels == 0)
    if not orphans.any() or not labels.any():
        return labels
    nearest = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    filled = labels.copy()
    filled[orphans] = labels[nearest[0][orphans], nearest[1][orphans]]
    return filled


def postprocess(labels: np.ndarray, min_size: int = 0, holes: bool = True) -> np.ndarray:
    """Drop small instances, fill holes, relabel 1..N (in that order: a dropped fragment
    inside an instance becomes a hole that the instance then fills)."""
    labels = remove_small(labels, min_size)
    if holes:
        labels = fill_holes(labels)
    return relabel_sequential(labels)
