"""The COCO layout: `--data coco:ANNOTATIONS.json[:IMAGE_DIR]`.

Images are looked up by their `file_name` (then by its last part) in IMAGE_DIR, or without it
in the JSON's folder, its `images/` subfolder and the `images/` folder beside it (Roboflow,
Label Studio and CVAT exports respectively). A `file_name` never leads out of those folders:
an absolute one or one with a `..` part is looked up by its last part only (a warning says so).
Links inside the folders are followed: they are the folder owner's (DVC and git-annex datasets
link every image), only the JSON is kept from pointing elsewhere. A sample is named by its
file's stem; its labels are the image's annotations, decoded when read (`io.coco`: crowd
regions ignored, overlaps resolved smaller-on-top, every category foreground). An image with
more annotations than `limits.TRAINING_INSTANCES` is a problem, and never decoded.

Splits: `--val-list` is a list file whose whole-number lines are image ids and whose other
lines are names (stems), or a second COCO file (`*.json`) holding the validation images
(found like the first file's); those images are then left out of training, by file name.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from instseg import limits
from instseg.data.samples import Layout, Sample, read_name_list, split_by_names, split_samples
from instseg.errors import DataError
from instseg.io.coco import CocoFile, CocoImage, CocoLabels, Findings, has_mask, load_coco
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


def stays_inside(file_name: str) -> bool:
    """Whether a JSON `file_name` joined to an image folder stays inside it: relative, no `..` part."""
    path = PurePath(file_name)
    return not path.is_absolute() and ".." not in path.parts


def find_image(file_name: str, folders: list[Path]) -> Path | None:
    """The first existing file among each folder's `file_name` (when it stays inside) and its last part."""
    name = PurePath(file_name).name
    tries = ([file_name] if stays_inside(file_name) else []) + ([name] if name not in ("", "..") else [])
    for folder in folders:
        for part in tries:
            if (folder / part).is_file():
                return folder / part
    return None


def discover_coco(annotations: str | os.PathLike, images: str | None = None) -> Layout:
    """Samples of a COCO file; the JSON's problems, missing images, clashing names and images with more
    annotations than a training image may hold are problems (and those images no samples)."""
    path = Path(annotations)
    if not path.is_file():
        raise DataError(f"{display_path(path)}: no such COCO annotations file")
    coco = load_coco(path)
    folders = image_folders(path, images)
    shown = display_path(path)
    problems, warnings = Findings(shown), Findings(shown)
    samples, names = [], {}
    for image in coco.images:
        found = _locate(coco, image, folders, problems, warnings)
        if found is None:
            continue
        name = display_path(found.stem)
        if name in names:
            problems.add("same name", f"{display_path(found)}: same name as {display_path(names[name])}; "
                                      "keep one file per stem")
            continue
        names[name] = found
        samples.append(Sample(name, found, coco.labels(image)))
    notes = [f"images from {', '.join(display_path(f) for f in folders)}",
             f"{len(coco.categories)} categories, all learnt as foreground"]
    return Layout("coco", path, samples, coco.problems + problems.lines() + _nothing_to_learn(coco), notes,
                  coco.warnings + warnings.lines())


def _locate(coco: CocoFile, image: CocoImage, folders: list[Path], problems: Findings,
            warnings: Findings) -> Path | None:
    """The image's file, or None with the problem added: not found, or too many annotations to train on."""
    where = coco.labels(image).where
    looked_in = ", ".join(display_path(f) for f in folders)
    found = find_image(image.file_name, folders)
    inside = stays_inside(image.file_name)
    if found is None:
        why = "not found" if inside else (f"leads outside the image folder, and "
                                          f"{display_path(PurePath(image.file_name).name)} is not")
        problems.add("not found", f"{where} {why} in {looked_in}")
        return None
    if not inside:
        warnings.add("outside", f"{where}: file_name leads outside the image folder; using {display_path(found)}")
    count, most = len(coco.annotations.get(image.id, [])), limits.TRAINING_INSTANCES
    if count > most:
        problems.add("too many", f"{where}: {count} annotations, more than the {most} instances a training image "
                                 "may hold (a training step grows with their square); split the image into tiles")
        return None
    return found


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
