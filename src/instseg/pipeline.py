"""Images in, instance label maps out: the prediction pipeline every runtime shares (torch-free).

    inputs (files, folders, globs) -> read -> resize to the working size -> batch images of
    one size -> runner -> cluster -> label map back to the original size (nearest) -> files

`instseg predict` drives it with a PyTorch runner built from a checkpoint
(`instseg.core.runner.TorchRunner`); an ONNX Runtime runner plugs into the same code, so
both produce the same files from the same network outputs.

The runner protocol
-------------------
A runner is a callable with a few attributes:

    runner(images) -> (semantic, embedding, count)
        images     N x 3 x H x W float32 RGB in [0, 1]; normalisation is the runner's job
                   (it lives inside the model and the exported graph)
        semantic   N x 2 x H x W background / foreground logits
        embedding  N x D x H x W
        count      N x 1 counter-head output, normalised to [0, 1]
        all numpy arrays.
    max_instances: int           count x max_instances = number of instances
    image_size: int              the working size: an image's shorter side is resized to it,
                                 as in training (`imageio.working_size`)
    cluster: ClusterParams       clustering defaults saved with the model
    multiple_of: int             H and W the runner accepts must divide by this (1 = any);
                                 the pipeline pads (edge values) and crops the outputs
    static_size: (H, W) or None  a runner fixed to one size gets every image resized to it

Output files go to one flat directory under names derived from the input's file name only
(`safe_name`), so an input name can never point outside it; inputs that would share a
name get `-2`, `-3`, ... in input order, and the renaming is reported.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from instseg.core.clustering import ClusterParams, instances_from_outputs
from instseg.core.metrics import count_instances
from instseg.errors import DataError
from instseg.imageio import (IMAGE_SUFFIXES, read_image, read_label_map, resize_image, resize_labels,
                             working_size, write_label_map, write_rgb)
from instseg.render import colorize, embedding_rgb, overlay, panel

GLOB_CHARS = re.compile(r"[*?\[]")
UNSAFE_CHARS = re.compile(r"[^\w.-]")
MATCH_SUFFIXES = ("_label", "_rgb")  # CVPPP: plant001_rgb.png <-> plant001_label.png


class Runner(Protocol):
    max_instances: int
    image_size: int
    cluster: ClusterParams
    multiple_of: int
    static_size: tuple[int, int] | None

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# -- inputs and names ------------------------------------------------------------------


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
            raise DataError(f"{path}: no such file or folder")
        found.update(dict.fromkeys(matches))
    return list(found)


def safe_name(path: str | os.PathLike) -> str:
    """A file-name stem that cannot leave the output folder: the input's stem only, with
    anything but letters, digits, '.', '-', '_' replaced and leading dots removed."""
    stem = UNSAFE_CHARS.sub("_", Path(path).stem).lstrip(".")
    return stem or "image"


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


def match_key(path: str | os.PathLike) -> str:
    """The key that pairs an image, its prediction and its ground truth: the safe stem without
    a trailing `_label`, then `_rgb` (plant001_rgb.png, plant001_rgb_label.png and
    plant001_label.png all give `plant001`)."""
    key = safe_name(path)
    for suffix in MATCH_SUFFIXES:
        key = key.removesuffix(suffix)
    return key


def label_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The label maps of a folder by match key: its `*_label.png` files when it has any
    (so CVPPP's `_rgb` / `_fg` files are ignored), else all its PNGs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    pngs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    labelled = [p for p in pngs if p.stem.endswith("_label")]
    files: dict[str, Path] = {}
    for path in labelled or pngs:
        key = match_key(path)
        if key in files:
            raise DataError(f"{folder}: {files[key].name} and {path.name} both match '{key}'; rename one")
        files[key] = path
    if not files:
        raise DataError(f"{folder}: folder holds no label PNGs")
    return files


# -- running -----------------------------------------------------------------------------


@dataclass
class Prediction:
    path: Path
    name: str
    image: np.ndarray  # H x W x 3 float32 in [0, 1], original size
    labels: np.ndarray  # H x W int32 instance ids, original size
    head_count: float  # the counter head's estimate, in instances
    embedding: np.ndarray  # D x h x w at the working size
    foreground: np.ndarray  # h x w bool at the working size


@dataclass
class Failure:
    path: Path
    name: str
    message: str  # one line, starting with the file name


@dataclass
class _Pending:
    path: Path
    name: str
    image: np.ndarray
    network_input: np.ndarray  # 3 x h x w at the size the runner sees


def network_size(height: int, width: int, runner: Runner) -> tuple[int, int]:
    """The H x W an image is fed to the runner at (before padding to `multiple_of`)."""
    if runner.static_size is not None:
        return tuple(runner.static_size)
    return working_size(height, width, runner.image_size)


def _pad(batch: np.ndarray, multiple: int) -> np.ndarray:
    h, w = batch.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return batch
    return np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")


def _check_outputs(outputs, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    semantic, embedding, count = (np.asarray(o) for o in outputs)
    fits = (semantic.ndim == embedding.ndim == 4 and semantic.shape[:2] == (n, 2) and embedding.shape[0] == n
            and count.shape == (n, 1) and semantic.shape[2] >= h and semantic.shape[3] >= w
            and embedding.shape[2:] == semantic.shape[2:])
    if not fits:
        raise ValueError(f"runner broke its contract: got semantic {semantic.shape}, embedding {embedding.shape}, "
                         f"count {count.shape} for {n} images of {h}x{w}")
    return semantic[..., :h, :w], embedding[..., :h, :w], count


def _run_batch(items: list[_Pending], runner: Runner, params: ClusterParams) -> Iterator[Prediction | Failure]:
    batch = np.stack([item.network_input for item in items]).astype(np.float32, copy=False)
    h, w = batch.shape[-2:]
    semantic, embedding, count = _check_outputs(runner(_pad(batch, runner.multiple_of)), len(items), h, w)
    for i, item in enumerate(items):
        try:
            labels = instances_from_outputs(semantic[i], embedding[i], count[i, 0], runner.max_instances, params)
        except DataError as exc:  # NaN / Inf outputs for this image: report it, go on with the others
            yield Failure(item.path, item.name, f"{item.path}: {exc}")
            continue
        yield Prediction(item.path, item.name, item.image, resize_labels(labels, item.image.shape[:2]),
                         float(count[i, 0]) * runner.max_instances, embedding[i], semantic[i, 1] > semantic[i, 0])


def predict(paths: Sequence[Path], runner: Runner, params: ClusterParams | None = None,
            batch_size: int = 4) -> Iterator[Prediction | Failure]:
    """Predict every image; yields one Prediction or Failure per input (unreadable files are
    failures naming the file). Images of one network size share a batch; to bound memory,
    the fullest group runs whenever 4 x batch_size images wait."""
    params = params or runner.cluster
    names = output_names(paths)
    waiting: dict[tuple[int, int], list[_Pending]] = {}
    for path, name in zip(paths, names):
        try:
            image = read_image(path)
        except DataError as exc:
            yield Failure(path, name, str(exc))
            continue
        size = network_size(*image.shape[:2], runner)
        network_input = resize_image(image, size).transpose(2, 0, 1)
        group = waiting.setdefault(size, [])
        group.append(_Pending(path, name, image, network_input))
        if len(group) >= batch_size or sum(map(len, waiting.values())) >= 4 * batch_size:
            fullest = max(waiting, key=lambda key: len(waiting[key]))
            yield from _run_batch(waiting.pop(fullest), runner, params)
    for group in waiting.values():
        yield from _run_batch(group, runner, params)


# -- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputOptions:
    overlay: bool = True
    panels: bool = False  # input / prediction / ground truth (when found in gt_files)
    embeddings: bool = False  # PCA picture of the embedding map
    gt_files: dict[str, Path] = field(default_factory=dict)  # match key -> label PNG


def _ground_truth(prediction: Prediction, gt_files: dict[str, Path]) -> np.ndarray | None:
    path = gt_files.get(match_key(prediction.path))
    if path is None:
        return None
    gt = read_label_map(path)
    if gt.shape != prediction.labels.shape:
        raise DataError(f"{path}: ground truth is {gt.shape[1]}x{gt.shape[0]} but {prediction.path} is "
                        f"{prediction.labels.shape[1]}x{prediction.labels.shape[0]}")
    return gt


def _pictures(prediction: Prediction, options: OutputOptions) -> dict[str, np.ndarray]:
    pictures = {}
    if options.overlay:
        pictures["overlay"] = overlay(prediction.image, prediction.labels)
    if options.panels:
        tiles = [("input", prediction.image),
                 (f"prediction ({int(prediction.labels.max(initial=0))})", colorize(prediction.labels))]
        gt = _ground_truth(prediction, options.gt_files)
        if gt is not None:
            tiles.append((f"ground truth ({count_instances(gt)})", colorize(gt)))
        pictures["panel"] = panel([tiles])
    if options.embeddings:
        pictures["embedding"] = embedding_rgb(prediction.embedding, prediction.foreground)
    return pictures


def write_prediction(prediction: Prediction, out_dir: Path, options: OutputOptions = OutputOptions()) -> list[Path]:
    """Write `<name>_label.png` (16-bit ids, input size) and the pictures asked for
    (`<name>_overlay.png`, `_panel.png`, `_embedding.png`); all are drawn before any is written."""
    pictures = _pictures(prediction, options)
    written = []
    for kind, array in [("label", prediction.labels), *pictures.items()]:
        path = out_dir / f"{prediction.name}_{kind}.png"
        try:
            (write_label_map if kind == "label" else write_rgb)(path, array)
        except OSError as exc:
            raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        written.append(path)
    return written
