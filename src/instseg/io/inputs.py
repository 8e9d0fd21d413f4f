"""Which files go in, and which names come out: input gathering, safe output names, and the
key that pairs an image with its prediction and its ground truth.

Output files go to one flat directory under names derived from the input's file name only
(`safe_name`), so an input name can never point outside it; inputs that would share a name
get `-2`, `-3`, ... in input order.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Sequence

from instseg.errors import ConfigError, DataError
from instseg.io.images import IMAGE_SUFFIXES, LABEL_FILE_SUFFIXES, tiff_named

GLOB_CHARS = re.compile(r"[*?\[]")
UNSAFE_CHARS = re.compile(r"[^\w.-]")
MATCH_SUFFIXES = ("_label", "_rgb")  # CVPPP: plant001_rgb.png <-> plant001_label.png


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def gather_inputs(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, not recursive) and globs -> image paths, each spec's
    matches sorted, duplicates dropped. A spec that matches nothing is an error naming it."""
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = _images_in(path)
            if not matches:
                raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            matches = [path]
        elif GLOB_CHARS.search(str(spec)):
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{spec}: no file matches this pattern")
        else:
            loop = path.is_symlink() and not path.exists()
            raise DataError(f"{path}: {'a symbolic link that leads nowhere or to itself' if loop else 'no such file or folder'}")
        found.update(dict.fromkeys(matches))
    return list(found)


def safe_name(path: str | os.PathLike) -> str:
    """A file-name stem that cannot leave the output folder: the input's stem only, without an
    OME-TIFF's `.ome` (x.ome.tif -> x), with anything but letters, digits, '.', '-', '_'
    replaced and leading dots removed."""
    stem = Path(path).stem
    if tiff_named(path) and stem.lower().endswith(".ome"):
        stem = stem[:-len(".ome")]
    return UNSAFE_CHARS.sub("_", stem).lstrip(".") or "image"


def output_names(paths: Sequence[Path]) -> list[str]:
    """One distinct output stem per input (case-insensitively distinct, for macOS/Windows):
    the safe stem, then `-2`, `-3`, ... for later inputs that would clash."""
    taken: set[str] = set()
    names = []
    for path in paths:
        base = name = safe_name(path)
        number = 1
        while name.casefold() in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name.casefold())
        names.append(name)
    return names


def match_key(path: str | os.PathLike, suffix: str | None = None) -> str:
    """The key that pairs an image, its prediction and its ground truth: the safe stem without
    `suffix` (another tool's, e.g. `_cp_masks`), then without a trailing `_label`, then `_rgb`
    (plant001_rgb.png, plant001_rgb_label.png and plant001_label.png all give `plant001`)."""
    key = safe_name(path)
    if suffix:
        key = key.removesuffix(suffix)
    for ending in MATCH_SUFFIXES:
        key = key.removesuffix(ending)
    return key


def check_suffix(option: str, suffix: str | None) -> None:
    """A ConfigError naming `option` (`--pred-suffix` / `--gt-suffix`) unless `suffix` is None
    or could end a file stem: it is compared with safe stems, so it holds only their characters."""
    if suffix is not None and (not suffix or UNSAFE_CHARS.search(suffix)):
        raise ConfigError(f"{option} {suffix!r}: expected the end of a file stem, such as _cp_masks "
                          "(letters, digits, '.', '-' and '_')")


def label_files(folder: str | os.PathLike, suffix: str | None = None) -> dict[str, Path]:
    """The label maps (PNG or TIFF) of a folder by match key: with `suffix`, the files whose
    stem ends with it; else its `*_label` files when it has any (so CVPPP's `_rgb` / `_fg`
    files are ignored), else all of them."""
    folder = Path(folder)
    if not folder.is_dir():
        what = ("a symbolic link that leads nowhere or to itself" if folder.is_symlink() and not folder.exists()
                else "a file, not a folder" if folder.exists() else "no such folder")
        raise DataError(f"{folder}: {what}")
    maps = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LABEL_FILE_SUFFIXES)
    if suffix:
        chosen = [p for p in maps if safe_name(p).endswith(suffix)]
    else:
        chosen = [p for p in maps if safe_name(p).endswith("_label")] or maps
    files: dict[str, Path] = {}
    for path in chosen:
        key = match_key(path, suffix)
        if key in files:
            raise DataError(f"{folder}: {files[key].name} and {path.name} both match '{key}'; rename one")
        files[key] = path
    if not files:
        which = f"label maps ending in {suffix}" if suffix else "label maps"
        raise DataError(f"{folder}: folder holds no {which} ({', '.join(LABEL_FILE_SUFFIXES)})")
    return files


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N); ValueError otherwise."""
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 3/8")
    return int(k), int(n)


def shard_spec(text: str | None) -> tuple[int, int] | None:
    """`--shard K/N` as (K, N) (None: no shard), or a ConfigError naming the option."""
    if text is None:
        return None
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def shard(paths: Sequence[Path], k: int, n: int) -> list[Path]:
    """The K-th of N disjoint parts that together hold every input: every K-th path of the
    sorted list, so N copies of a command given the same inputs split them with no coordination."""
    return sorted(paths, key=str)[k - 1::n]
