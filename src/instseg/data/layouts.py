"""`--data` specs and dataset folders: `synthetic`, `cvppp:PATH`, `folder:PATH`,
`coco:ANNOTATIONS.json[:IMAGE_DIR]`, or a bare PATH.

A bare path is recognised by its contents: `*_rgb.png` files mean CVPPP, an `images/`
subfolder means the folder layout, a `.json` file means COCO. Torch-free (`instseg data check` does not need torch);
`datasets.build_datasets` is the entry point that turns a spec into torch datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from instseg.data.coco import JSON_SUFFIX, discover_coco, split_coco_path
from instseg.data.cvppp import discover_cvppp, looks_like_cvppp
from instseg.data.folder import discover_folder, looks_like_folder
from instseg.data.samples import Layout
from instseg.errors import ConfigError, DataError
from instseg.io.images import display_path

FILE_KINDS = ("cvppp", "folder", "coco")


@dataclass(frozen=True)
class DataSpec:
    kind: str  # "synthetic", "cvppp", "folder" or "coco"
    path: str | None = None  # the folder (COCO: the annotations file)
    images: str | None = None  # COCO: the image folder, when given

    def __str__(self) -> str:
        text = self.kind if self.path is None else f"{self.kind}:{self.path}"
        return text if self.images is None else f"{text}:{self.images}"

    def absolute(self) -> DataSpec:
        """The same spec with absolute paths, so a run's config.json works from any directory."""
        if self.path is None:
            return self
        return DataSpec(self.kind, str(Path(self.path).absolute()),
                        None if self.images is None else str(Path(self.images).absolute()))


def parse_data_spec(spec: str) -> DataSpec:
    """`synthetic`, `KIND:PATH`, or the path of a folder whose layout is detected."""
    if spec == "synthetic":
        return DataSpec("synthetic")
    kind, sep, path = spec.partition(":")
    if sep and kind == "coco" and path:
        return DataSpec(kind, *split_coco_path(path))
    if sep and kind in FILE_KINDS and path:
        return DataSpec(kind, path)
    if Path(spec).is_file() and spec.lower().endswith(JSON_SUFFIX):
        return DataSpec("coco", spec)
    if Path(spec).is_dir():
        return DataSpec(detect_kind(Path(spec)), spec)
    if "/" in spec or os.sep in spec or Path(spec).exists() or Path(spec).is_symlink():
        raise DataError(missing_folder(Path(spec)))
    raise ConfigError(f"unknown --data '{spec}': use 'synthetic', 'cvppp:PATH', 'folder:PATH', "
                      "'coco:ANNOTATIONS.json[:IMAGE_DIR]' or an existing folder")


def missing_folder(path: Path) -> str:
    """Why `path` is not a dataset folder, precisely: a loop, a dangling link, a file, or nothing."""
    shown = display_path(path)
    if path.is_symlink() and not path.exists():
        return f"{shown}: a symbolic link that leads nowhere or to itself, not a dataset folder"
    if path.exists():
        return f"{shown}: a file, not a dataset folder (give the folder that holds the images)"
    return f"{shown}: no such directory"


def detect_kind(root: Path) -> str:
    if looks_like_folder(root):
        return "folder"
    if looks_like_cvppp(root):
        return "cvppp"
    raise DataError(f"{display_path(root)}: neither a CVPPP folder (*_rgb.png files) nor a folder dataset "
                    "(images/ and masks/ subfolders)")


def discover(spec: DataSpec) -> Layout:
    """The samples of a file dataset; DataError when the folder is missing, empty or not a dataset."""
    if spec.kind not in FILE_KINDS or spec.path is None:
        raise ConfigError(f"--data {spec}: not a dataset folder")
    if spec.kind == "coco":
        return discover_coco(spec.path, spec.images)
    root = Path(spec.path)
    if not root.is_dir():
        raise DataError(missing_folder(root))
    if not any(root.iterdir()):
        raise DataError(f"{display_path(root)}: folder is empty")
    if spec.kind == "cvppp":
        return discover_cvppp(root)
    return discover_folder(root)
