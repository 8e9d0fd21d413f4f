"""Images in, instance label maps out: the one prediction path every runtime and evaluation shares.

    sources (files, or a dataset's images) -> resize to the working size -> batch images of
    one size -> runner -> check outputs -> cluster -> label map back to the original size

`instseg predict` and `instseg evaluate` drive it with a PyTorch runner
(`instseg.predict.torch_runner.TorchRunner`, from a checkpoint or an in-memory model, as training's
validation does); `instseg infer` with the ONNX Runtime runner. All of them get the same
`Prediction` from the same network outputs.

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
    scale: float or None         instead, a fixed resize factor (objects keep their pixel size);
                                 images larger than a tile are then predicted tile by tile
    tile, tile_overlap: int      that tile's side and its overlap with each neighbour, in pixels
                                 at the working scale (read only when `scale` is set; see tiling.py)
    cluster: ClusterParams       clustering defaults saved with the model
    multiple_of: int             H and W the runner accepts must divide by this (1 = any);
                                 the pipeline pads (edge values) and crops the outputs
    static_size: (H, W) or None  a runner fixed to one size gets every image resized to it
    reading: Reading             which channels of a file feed the model and how its intensities
                                 are scaled to [0, 1] (`io.microscopy`), as in training
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from instseg.errors import DataError
from instseg.instances.clustering import ClusterParams, instances_from_outputs
from instseg.instances.postprocess import relabel_sequential
from instseg.instances.seeds import seed_scores
from instseg.io.images import read_image, resize_image, resize_labels, working_size
from instseg.io.inputs import output_names
from instseg.io.microscopy import FIXED, Reading
from instseg.predict.tiling import Stitcher, plan_tiles


class Runner(Protocol):
    max_instances: int
    image_size: int
    scale: float | None
    tile: int
    tile_overlap: int
    cluster: ClusterParams
    multiple_of: int
    static_size: tuple[int, int] | None
    reading: Reading

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass
class Source:
    """One image to predict: where it came from (a file, or a dataset item's name), the name
    its outputs get, its pixels (H x W x 3 float32 in [0, 1]) and its position in the input."""

    path: Path
    name: str
    image: np.ndarray
    index: int = 0


@dataclass
class Prediction:
    path: Path
    name: str
    image: np.ndarray  # H x W x 3 float32 in [0, 1], original size
    labels: np.ndarray  # H x W int32 instance ids, original size
    head_count: float  # the counter head's estimate, in instances (tiled: the sum over tiles)
    embedding: np.ndarray | None  # D x h x w at the working size (None when tiled)
    foreground: np.ndarray | None  # h x w bool at the working size (None when tiled)
    index: int = 0  # the source's position in the input
    probability: np.ndarray | None = None  # h x w at the working size whose mean over an instance is its score:
    # the foreground probability, or the seed map of the spatial objective (`instance_probability`)


@dataclass
class Failure:
    path: Path
    name: str
    message: str  # one line, starting with the file name
    index: int = 0


def read_sources(paths: Sequence[Path], names: Sequence[str] | None = None,
                 reading: Reading = FIXED) -> Iterator[Source | Failure]:
    """Image files as sources, read one at a time; an unreadable file is a Failure naming it.
    `names`: their output names (default `output_names(paths)`); `reading`: the model's channels
    and intensity scaling (`io.microscopy`; a model from before they were recorded reads by dtype)."""
    for index, (path, name) in enumerate(zip(paths, names or output_names(paths))):
        yield read_source(path, name, index, reading)


def read_source(path: Path, name: str, index: int, reading: Reading = FIXED) -> Source | Failure:
    """One image file as a source read as `reading` says, or a Failure naming it when it cannot be read."""
    try:
        return Source(path, name, read_image(path, reading), index)
    except DataError as exc:
        return Failure(path, name, str(exc), index)


def network_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An H x W x 3 image as the 3 x h x w array a batch holds, at its network size."""
    return resize_image(image, size).transpose(2, 0, 1)


def network_size(height: int, width: int, runner: Runner) -> tuple[int, int]:
    """The H x W an image is fed to the runner at (before padding to `multiple_of`)."""
    if runner.static_size is not None:
        return tuple(runner.static_size)
    return working_size(height, width, runner.image_size, runner.scale)


def _pad(batch: np.ndarray, multiple: int) -> np.ndarray:
    h, w = batch.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return batch
    return np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")


def check_outputs(outputs, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runner's outputs cropped to h x w, or a DataError when they do not fit its contract."""
    semantic, embedding, count = (np.asarray(o) for o in outputs)
    fits = (semantic.ndim == embedding.ndim == 4 and semantic.shape[:2] == (n, 2) and embedding.shape[0] == n
            and count.shape == (n, 1) and semantic.shape[2] >= h and semantic.shape[3] >= w
            and embedding.shape[2:] == semantic.shape[2:])
    if not fits:
        raise DataError(f"the model's outputs do not fit its contract: got semantic {semantic.shape}, embedding "
                        f"{embedding.shape}, count {count.shape} for {n} images of {h}x{w}")
    return semantic[..., :h, :w], embedding[..., :h, :w], count


# The pixel budget of clustering: outputs are up-sampled to the input's size for clustering
# ("full resolution") only up to this many pixels; a larger input is clustered at the largest
# size of its aspect within the budget and its label map up-sampled (nearest). So clustering's
# memory and time are those of a 2 Mpx image at most, whatever the input (docs/prediction.md).
MAX_CLUSTER_PIXELS = 2**21


def clustering_size(work: tuple[int, int], original: tuple[int, int], params: ClusterParams) -> tuple[int, int]:
    """Where an image's outputs are clustered: the working size, or the original size within
    the pixel budget (MAX_CLUSTER_PIXELS), never smaller than the working size."""
    if not params.full_resolution or original[0] * original[1] <= work[0] * work[1]:
        return work
    scale = min(1.0, (MAX_CLUSTER_PIXELS / (original[0] * original[1])) ** 0.5)
    size = max(1, round(original[0] * scale)), max(1, round(original[1] * scale))
    return size if size[0] * size[1] > work[0] * work[1] else work


def _instances(semantic: np.ndarray, embedding: np.ndarray, count: float, max_instances: int,
               original: tuple[int, int], params: ClusterParams) -> np.ndarray:
    """One image's outputs at the working size -> its label map at the original size."""
    work = semantic.shape[1:]
    size = clustering_size(work, original, params)
    if size != work:
        semantic = resize_image(semantic.transpose(1, 2, 0), size).transpose(2, 0, 1)
        embedding = resize_image(embedding.transpose(1, 2, 0), size).transpose(2, 0, 1)
        # min_size counts pixels at the working size, wherever the clustering runs
        params = replace(params, min_size=round(params.min_size * size[0] * size[1] / (work[0] * work[1])))
    labels = instances_from_outputs(semantic, embedding, count, max_instances, params)
    resized = resize_labels(labels, original)
    # nearest up-sampling keeps every id (each source pixel is hit); only shrinking may drop one
    return resized if all(n <= m for n, m in zip(labels.shape, original)) else relabel_sequential(resized)


def foreground_probability(semantic: np.ndarray) -> np.ndarray:
    """Softmax foreground probability of 2 x H x W logits: sigmoid of their difference."""
    return (1.0 / (1.0 + np.exp(np.clip(semantic[0] - semantic[1], -60, 60)))).astype(np.float32)


def instance_probability(outputs: "Outputs", params: ClusterParams) -> np.ndarray:
    """The map instance scores average: the seed map where seeds made the instances (a seed is the
    network's confidence that an object is centred there), else the foreground probability."""
    if params.method == "seeds":
        return seed_scores(outputs.embedding)
    return foreground_probability(outputs.semantic)


def head_count(count: float, max_instances: int) -> float:
    """The counter head's output (normalised to [0, 1]) in instances."""
    return float(count) * max_instances


@dataclass
class Outputs:
    """One image's network outputs at the working size, before clustering."""

    source: Source
    semantic: np.ndarray  # 2 x h x w
    embedding: np.ndarray  # D x h x w
    count: float  # the counter head's normalised output


Batch = list[tuple[Source, np.ndarray]]  # sources of one network size with their 3 x h x w inputs


@dataclass
class Tiled:
    """A source larger than a tile (fixed-scale runs): it goes through the network on its own,
    tile by tile (`predict_tiled`), not in a batch."""

    source: Source


def batches(sources: Iterable[Source | Failure], runner: Runner, batch_size: int) -> Iterator[Batch | Tiled | Failure]:
    """Sources resized to their network size and grouped into batches of one size; failed
    sources pass through, sources larger than a tile come alone as `Tiled`. To bound memory,
    the fullest group goes whenever 4 x batch_size images wait."""
    waiting: dict[tuple[int, int], Batch] = {}
    for source in sources:
        if isinstance(source, Failure):
            yield source
            continue
        size = network_size(*source.image.shape[:2], runner)
        if needs_tiles(size, runner):
            yield Tiled(source)
            continue
        group = waiting.setdefault(size, [])
        group.append((source, network_input(source.image, size)))
        if len(group) >= batch_size or sum(map(len, waiting.values())) >= 4 * batch_size:
            yield waiting.pop(max(waiting, key=lambda key: len(waiting[key])))
    yield from waiting.values()


def network_batch(batch: Batch, runner: Runner) -> np.ndarray:
    """A batch as the runner's N x 3 x H x W float32 input (padded to its multiple)."""
    stacked = np.stack([network_input for _, network_input in batch]).astype(np.float32, copy=False)
    return _pad(stacked, runner.multiple_of)


def run_network(batch: Batch, runner: Runner) -> list[Outputs]:
    """Run one batch; a DataError when the outputs break the runner contract."""
    h, w = batch[0][1].shape[-2:]
    semantic, embedding, count = check_outputs(runner(network_batch(batch, runner)), len(batch), h, w)
    return [Outputs(source, semantic[i], embedding[i], count[i, 0]) for i, (source, _) in enumerate(batch)]


def cluster_outputs(outputs: Outputs, max_instances: int, params: ClusterParams) -> Prediction | Failure:
    """One image's outputs -> its Prediction, or a Failure naming it when they are not finite."""
    source = outputs.source
    if not np.isfinite(outputs.count):
        return Failure(source.path, source.name, f"{source.path}: the model's count output is not finite "
                                                 f"({outputs.count}); the model or its input is broken", source.index)
    try:
        labels = _instances(outputs.semantic, outputs.embedding, outputs.count, max_instances,
                            source.image.shape[:2], params)
    except DataError as exc:  # NaN / Inf outputs for this image: report it, go on with the others
        return Failure(source.path, source.name, f"{source.path}: {exc}", source.index)
    return Prediction(source.path, source.name, source.image, labels, head_count(outputs.count, max_instances),
                      outputs.embedding, outputs.semantic[1] > outputs.semantic[0], source.index,
                      instance_probability(outputs, params))


def needs_tiles(size: tuple[int, int], runner: Runner) -> bool:
    """Whether an image of this network size is predicted tile by tile (fixed-scale runs only)."""
    return runner.scale is not None and max(size) > runner.tile


def predict_tiled(source: Source, runner: Runner, params: ClusterParams) -> Prediction | Failure:
    """One large image, tile by tile, its instances stitched at the original size (tiling.py);
    the foreground probability (instance scores) is taken from each tile's own share."""
    height, width = source.image.shape[:2]
    tile, overlap = (max(1, round(n / runner.scale)) for n in (runner.tile, runner.tile_overlap))
    stitcher, count = Stitcher(height, width), 0.0
    probability = np.zeros((height, width), dtype=np.float32)
    for part in plan_tiles(height, width, tile, overlap):
        crop = source.image[part.box]
        piece = Source(source.path, source.name, crop, source.index)
        [outputs] = run_network([(piece, network_input(crop, network_size(*crop.shape[:2], runner)))], runner)
        result = cluster_outputs(outputs, runner.max_instances, params)
        if isinstance(result, Failure):
            return result
        stitcher.add(part, result.labels)
        count += result.head_count
        y0, y1, x0, x1 = part.core
        tile_probability = resize_image(result.probability[..., None], crop.shape[:2])[..., 0]
        probability[y0:y1, x0:x1] = tile_probability[y0 - part.y0:y1 - part.y0, x0 - part.x0:x1 - part.x0]
    labels = relabel_sequential(stitcher.labels)
    return Prediction(source.path, source.name, source.image, labels, count, None, None, source.index, probability)


def predict_sources(sources: Iterable[Source | Failure], runner: Runner, params: ClusterParams | None = None,
                    batch_size: int = 4) -> Iterator[Prediction | Failure]:
    """Predict every source, one stage after the other; yields one Prediction or Failure per
    source (failed sources pass through). Results come in batch order: use `index`.
    `predict.stages` runs the same stages overlapped."""
    params = params or runner.cluster
    for batch in batches(sources, runner, batch_size):
        if isinstance(batch, Failure):
            yield batch
            continue
        if isinstance(batch, Tiled):
            yield predict_tiled(batch.source, runner, params)
            continue
        for outputs in run_network(batch, runner):
            yield cluster_outputs(outputs, runner.max_instances, params)


def predict(paths: Sequence[Path], runner: Runner, params: ClusterParams | None = None,
            batch_size: int = 4, names: Sequence[str] | None = None) -> Iterator[Prediction | Failure]:
    """Predict image files (unreadable files are failures naming the file)."""
    return predict_sources(read_sources(paths, names, runner.reading), runner, params, batch_size)
