"""Datasets on disk: which image goes with which label map, and reading one pair.

A layout (CVPPP or folder, see cvppp.py / folder.py) is discovered into `Sample`s: files are
paired by stem and sorted by name, never by zipping two directory listings. Discovery reports
structural problems (unmatched files, duplicate stems) instead of guessing. Reading a sample
validates it: image and label map have the same size, ids are non-negative 16-bit integers,
and ids are made contiguous (1..N), so the instance count of an image is its largest id.

numpy + Pillow only: `instseg data check` and the ONNX path use this without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instseg.errors import DataError
from instseg.instances.postprocess import relabel_sequential
from instseg.io.coco import CocoLabels, line_count
from instseg.io.images import check_label_mode, display_path, read_header, read_image, read_label_map
from instseg.io.microscopy import FIXED, Reading

MAX_LABEL_ID = 65535  # label maps are 8- or 16-bit


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and what belongs to it; `name` is the stem used by split lists."""

    name: str
    image: Path
    labels: Path | CocoLabels | None = None  # a label map file, or (COCO) the image's annotations
    fg: Path | None = None  # CVPPP foreground mask, cross-checked by `instseg data check`
    count: int | None = None  # CVPPP csv leaf count, cross-checked likewise


@dataclass
class Layout:
    """The samples of a dataset folder and what is structurally wrong with it."""

    kind: str  # "cvppp", "folder" or "coco"
    root: Path  # the folder (COCO: the annotations file)
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)  # make the dataset unusable for training
    notes: list[str] = field(default_factory=list)  # worth knowing, harmless (ignored files)
    warnings: list[str] = field(default_factory=list)  # worth a look; training works (COCO box-only annotations)

    @property
    def labelled(self) -> list[Sample]:
        return [s for s in self.samples if s.labels is not None]

    def require_labels(self) -> list[Sample]:
        """The labelled samples, or DataError when the layout cannot be trained on."""
        where = display_path(self.root)
        if self.problems:
            raise unusable(self.problems, where)
        labelled = self.labelled
        if not labelled:
            raise DataError(f"{where}: no label maps found ({self.kind} layout): usable for prediction only")
        return labelled


def unusable(problems: list[str], spec: str) -> DataError:
    """The error that stops training on a dataset with problems: the first, how many more, and the
    `data check` command (of the `--data` value `spec`) that lists them all."""
    count = line_count(problems)
    more = f" (and {count - 1} more)" if count > 1 else ""
    return DataError(f"{problems[0]}{more}; run `instseg data check {spec}` for the full list")


def list_files(directory: Path) -> list[Path]:
    """Regular, non-hidden files of a directory, sorted by name (no recursion)."""
    try:
        entries = sorted(directory.iterdir(), key=lambda p: os.fsencode(p.name))
    except OSError as exc:
        raise DataError(f"{display_path(directory)}: cannot list directory ({exc.strerror})") from exc
    return [p for p in entries if p.is_file() and not p.name.startswith(".")]


def index_by_stem(paths: list[Path], strip: str = "") -> tuple[dict[str, Path], list[str]]:
    """{stem: path} (`strip` removed from the end of the stem), and a problem per duplicate stem."""
    index: dict[str, Path] = {}
    problems = []
    for path in paths:
        stem = display_path(path.stem)
        stem = stem[: len(stem) - len(strip)] if strip else stem
        if stem in index:
            problems.append(f"{display_path(path)}: same name as {display_path(index[stem])}; "
                            "keep one file per stem")
            continue
        index[stem] = path
    return index, problems


def unmatched(files: dict[str, Path], partners: dict[str, Path], what: str) -> list[str]:
    """One problem per file of `files` whose stem has no entry in `partners`."""
    return [f"{display_path(path)}: no matching {what}" for stem, path in files.items() if stem not in partners]


# -- reading one sample ----------------------------------------------------------------------

def read_instance_labels(path: Path) -> np.ndarray:
    """H x W int64 ids made contiguous 1..N (0 = background), refusing ids above 16 bits."""
    labels = read_label_map(path)
    top = int(labels.max()) if labels.size else 0
    if top > MAX_LABEL_ID:
        raise DataError(f"{display_path(path)}: label id {top} is above {MAX_LABEL_ID}; "
                        "label maps must be 8- or 16-bit")
    present = np.bincount(labels.ravel(), minlength=1)[1:] > 0
    if not present.all():  # ids not contiguous (folder data may skip ids): relabel
        labels = relabel_sequential(labels).astype(np.int64)
    return labels


def check_same_size(image: tuple[int, int], labels: tuple[int, int], image_path: Path, labels_path: Path) -> None:
    if tuple(image) != tuple(labels):
        raise DataError(f"{display_path(labels_path)}: label map is {labels[0]}x{labels[1]} (HxW) but "
                        f"{display_path(image_path)} is {image[0]}x{image[1]}")


def read_sample(sample: Sample, reading: Reading = FIXED) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 float32 image in [0, 1], H x W int64 contiguous labels) of a labelled sample;
    `reading`: the run's channels and intensity scaling (`io.microscopy`)."""
    if sample.labels is None:
        raise DataError(f"{display_path(sample.image)}: has no label map")
    image = read_image(sample.image, reading)
    if isinstance(sample.labels, CocoLabels):
        return image, sample.labels.decode(image.shape[:2])
    labels = read_instance_labels(sample.labels)
    check_same_size(image.shape[:2], labels.shape, sample.image, sample.labels)
    return image, labels


def scan_sizes(samples: list[Sample]) -> list[tuple[int, int]]:
    """(H, W) of every sample from file headers, checking label maps agree: fails before training does."""
    sizes = []
    for sample in samples:
        image = read_header(sample.image)
        if isinstance(sample.labels, CocoLabels):
            coco = sample.labels.image
            if coco.height is not None and (coco.height, coco.width) != (image.height, image.width):
                raise DataError(f"{sample.labels.where}: the JSON says {coco.width}x{coco.height} but the image file "
                                f"is {image.width}x{image.height} (width x height)")
        elif sample.labels is not None:
            labels = read_header(sample.labels)
            check_label_mode(labels.mode, sample.labels)
            check_same_size((image.height, image.width), (labels.height, labels.width), sample.image, sample.labels)
        sizes.append((image.height, image.width))
    return sizes


# -- splits ----------------------------------------------------------------------------------

def read_name_list(path: str | os.PathLike) -> list[str]:
    """Stems, one per line; blank lines and '#' comments are skipped."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise DataError(f"{display_path(path)}: cannot read name list ({exc.strerror})") from exc
    names = [display_path(line.split("#", 1)[0].strip()) for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{display_path(path)}: name list is empty")
    return list(dict.fromkeys(names))


def split_samples(
    samples: list[Sample],
    *,
    val_split: float,
    val_list: str | os.PathLike | None,
    seed: int,
) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the stems of `val_list` when given, else a seeded `val_split` fraction."""
    if len(samples) < 2:
        raise DataError(f"need at least 2 labelled images to split into training and validation, "
                        f"found {len(samples)}")
    if val_list is not None:
        return split_by_names(samples, read_name_list(val_list), val_list)
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must lie strictly between 0 and 1, got {val_split}")
    n_val = min(max(1, round(len(samples) * val_split)), len(samples) - 1)
    order = np.random.default_rng(seed).permutation(len(samples))
    chosen = {samples[i].name for i in order[:n_val]}
    return [s for s in samples if s.name not in chosen], [s for s in samples if s.name in chosen]


def split_by_names(samples: list[Sample], wanted: list[str], source: str | os.PathLike) -> tuple[list[Sample], list[Sample]]:
    """(train, val) with the samples named in `wanted` (read from the list file `source`) for validation."""
    names = {s.name for s in samples}
    missing = [n for n in wanted if n not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{display_path(source)}: {len(missing)} name(s) not in the dataset: {shown}")
    chosen = set(wanted)
    train = [s for s in samples if s.name not in chosen]
    val = [s for s in samples if s.name in chosen]
    if not train:
        raise DataError(f"{display_path(source)}: lists every image; nothing is left for training")
    return train, val
