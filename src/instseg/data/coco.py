"""The COCO layout: `--data coco:ANNOTATIONS.json[:IMAGE_DIR]`.

Images are looked up by their `file_name` (then by its last part) in IMAGE_DIR, or without it
in the JSON's folder, its `images/` subfolder and the `images/` folder beside it (Roboflow,
Label Studio and CVAT exports respectively). A sample is named by its file's stem; its labels
are the image's annotations, decoded when read (`io.coco`: crowd regions ignored,
overlaps resolved smaller-on-top, every category foreground).

Splits: `--val-list` is a list file whose whole-number lines are image ids and whose other
lines are names (stems), or a second COCO file (`*.json`) holding the validation images
(found like the first file's); those images are then left out of training, by file name.
"""

from __future__ import annotations

import os
from pathlib import Path

from instseg.data.samples import Layout, Sample, read_name_list, split_by_names, split_samples
from instseg.errors import DataError
from instseg.io.coco import CocoFile, CocoLabels, has_mask, load_coco
from instseg.io.images import display_path

JSON_SUFFIX = ".json"


def split_coco_path(text: str) -> tuple[str, str | None]:
    """'ANN.json' or 'ANN.json:IMAGE_DIR' -> (annotations, image folder or None)."""
    cut = text.lower().find(JSON_SUFFIX + ":")
    if cut < 0:
        return text, None
    return text[: cut + len(JSON_SUFFIX)], text[cut + len(JSON_SUFFIX) + 1:] or None


def image_folders(annotations: Path, images: str | None) -> list[Path]:
    if images is not None:
        return [Path(images)]
    return [annotations.parent, annotations.parent / "images", annotations.parent.parent / "images"]


def find_image(file_name: str, folders: list[Path]) -> Path | None:
    """The first existing file among each folder's `file_name` and its last part."""
    for folder in folders:
        for candidate in (folder / file_name, folder / Path(file_name).name):
            if candidate.is_file():
                return candidate
    return None


def discover_coco(annotations: str | os.PathLike, images: str | None = None) -> Layout:
    """Samples of a COCO file; the JSON's problems, missing images and clashing names are problems."""
    path = Path(annotations)
    if not path.is_file():
        raise DataError(f"{display_path(path)}: no such COCO annotations file")
    coco = load_coco(path)
    folders = image_folders(path, images)
    problems, samples, names = list(coco.problems), [], {}
    for image in coco.images:
        found = find_image(image.file_name, folders)
        if found is None:
            problems.append(f"{display_path(path)}: image {image.id} ({display_path(image.file_name)}) not found in "
                            f"{', '.join(display_path(f) for f in folders)}")
            continue
        name = display_path(found.stem)
        if name in names:
            problems.append(f"{display_path(found)}: same name as {display_path(names[name])}; keep one file per stem")
            continue
        names[name] = found
        samples.append(Sample(name, found, coco.labels(image)))
    problems += _nothing_to_learn(coco)
    notes = [f"images from {', '.join(display_path(f) for f in folders)}",
             f"{len(coco.categories)} categories, all learnt as foreground"]
    return Layout("coco", path, samples, problems, notes, list(coco.warnings))


def _nothing_to_learn(coco: CocoFile) -> list[str]:
    """A file whose every mask is a crowd region: CVAT exports masks so unless told otherwise."""
    masks = [ann for anns in coco.annotations.values() for ann in anns if has_mask(ann)]
    if masks and all(ann.get("iscrowd") for ann in masks):
        return [f"{display_path(coco.path)}: every mask is a crowd region (iscrowd 1), which training ignores; "
                "CVAT exports masks so unless their label has an is_crowd attribute left unchecked (see docs/coco.md)"]
    return []


def split_coco(layout: Layout, images: str | None, *, val_split: float, val_list: str | os.PathLike | None,
               seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val) of a COCO dataset: see the module docstring."""
    samples = layout.require_labels()
    if val_list is None:
        return split_samples(samples, val_split=val_split, val_list=None, seed=seed)
    if str(val_list).lower().endswith(JSON_SUFFIX):
        val = discover_coco(val_list, images).require_labels()
        held_out = {sample.image.resolve() for sample in val}
        train = [sample for sample in samples if sample.image.resolve() not in held_out]
        if not train:
            raise DataError(f"{display_path(val_list)}: holds every image of {display_path(layout.root)}; "
                            "nothing is left for training")
        return train, val
    by_id = {str(sample.labels.image.id): sample.name for sample in samples if isinstance(sample.labels, CocoLabels)}
    wanted = [by_id.get(line, line) if line.isdigit() else line for line in read_name_list(val_list)]
    return split_by_names(samples, wanted, val_list)
