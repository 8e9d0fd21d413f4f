"""The generic folder layout: `images/` and `masks/`, matched by file stem.

    PATH/images/<stem>.png|.tif|.tiff|.jpg|.jpeg|.bmp   RGB, RGBA, grey, 8- or 16-bit
    PATH/masks/<stem>.png|.tif|.tiff                     instance ids, 8- or 16-bit, palette or grey

Ids need not be contiguous (they are relabelled 1..N when read). Masks must be lossless: a
JPEG mask is a problem, not a guess. Without `masks/` the images are unlabelled (prediction).
"""

from __future__ import annotations

from pathlib import Path

from instseg.data.samples import Layout, Sample, index_by_stem, list_files, unmatched
from instseg.errors import DataError
from instseg.io.images import IMAGE_SUFFIXES, LABEL_FILE_SUFFIXES, display_path

IMAGES, MASKS = "images", "masks"


def looks_like_folder(root: Path) -> bool:
    return (root / IMAGES).is_dir()


def discover_folder(root: Path) -> Layout:
    """Samples of an images/ + masks/ folder, paired by stem; unmatched files are problems."""
    images_dir, masks_dir = root / IMAGES, root / MASKS
    if not images_dir.is_dir():
        raise DataError(f"{display_path(root)}: no '{IMAGES}/' subfolder (folder layout: {IMAGES}/ and {MASKS}/)")
    image_files = list_files(images_dir)
    mask_files = list_files(masks_dir) if masks_dir.is_dir() else []
    notes = [f"{display_path(p)}: ignored (not an image)" for p in image_files
             if p.suffix.lower() not in IMAGE_SUFFIXES]
    problems = [f"{display_path(p)}: masks must be PNG or TIFF (lossless), not {p.suffix or 'no suffix'}"
                for p in mask_files if p.suffix.lower() not in LABEL_FILE_SUFFIXES]
    images, duplicates = index_by_stem([p for p in image_files if p.suffix.lower() in IMAGE_SUFFIXES])
    masks, more = index_by_stem([p for p in mask_files if p.suffix.lower() in LABEL_FILE_SUFFIXES])
    problems += duplicates + more
    if not images:
        raise DataError(f"{display_path(images_dir)}: no images ({', '.join(IMAGE_SUFFIXES)})")
    problems += unmatched(masks, images, f"image in {IMAGES}/")
    if masks:  # no masks at all: an unlabelled set for prediction
        problems += unmatched(images, masks, f"mask in {MASKS}/")
    samples = [Sample(name, path, masks.get(name)) for name, path in sorted(images.items())]
    return Layout("folder", root, samples, problems, notes)
