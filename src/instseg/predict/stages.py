"""The prediction pipeline's stages overlapped: reading, the network, clustering and writing
run at once on threads, so a folder goes at the pace of its slowest stage, not their sum.

    read (workers) -> batch -> network (1 thread) -> cluster (workers) -> write (workers)

The stages are `predict.pipeline`'s (`read_source`, `batches`, `run_network`,
`cluster_outputs`), so the results are those of `pipeline.predict`, item for item and in the
same order. Threads suffice: Pillow's decoders and encoders, ONNX Runtime, PyTorch and numpy's
array work release the GIL. Every stage holds at most `depth` items (queued, running or
done and not yet taken), so memory is bounded by the depths, whatever the folder's length.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from threadpoolctl import threadpool_limits

from instseg.instances.clustering import ClusterParams
from instseg.io.microscopy import FIXED, Reading
from instseg.limits import at_most_cpus, usable_cpus
from instseg.predict.pipeline import (
    Batch,
    Failure,
    Outputs,
    Prediction,
    Runner,
    Source,
    Tiled,
    batches,
    cluster_outputs,
    predict_tiled,
    read_source,
    run_network,
)

In = TypeVar("In")
Out = TypeVar("Out")
STAGES = {"read": "reading", "network": "network", "cluster": "clustering", "write": "writing"}


def default_workers() -> int:
    """Threads per CPU stage: the available CPUs, up to 4. On 2 cores, 2 rather than 1 were
    level on 256 px images and 1.3x faster on CVPPP's 530 x 500 plants, where clustering at
    full resolution is the slowest stage."""
    return min(4, usable_cpus())


def bounded_threads(asked: int | None) -> int:
    """Threads per CPU stage for a request (None: `default_workers`), at most the available
    CPUs (every stage holds 2 items per thread: `--threads 10000` would read thousands of
    images ahead)."""
    return default_workers() if asked is None else max(1, at_most_cpus(asked))


def threads_note(asked: int, used: int, what: str) -> str:
    """One line for the log when a thread count was lowered ("" when it was not)."""
    if asked <= used:
        return ""
    return f"using {used} {what} (asked for {asked}; {usable_cpus()} CPUs available)"


@dataclass
class StageTimes:
    """Seconds each stage spent working, summed over its threads. With the stages overlapped,
    the busiest one per thread sets the pace. Thread-safe."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    threads: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 1))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def busiest(self) -> str:
        """The stage with the most busy time per thread: the one that sets the pace."""
        return max(self.seconds, key=lambda stage: self.seconds[stage] / self.threads[stage])

    def describe(self, images: int) -> str:
        """One line: each stage's busy milliseconds per image, and the busiest stage per thread."""
        stages = ", ".join(f"{STAGES[stage]} {seconds / images * 1000:.0f} ms" for stage, seconds in self.seconds.items())
        pace = self.busiest()
        per_thread = self.seconds[pace] / self.threads[pace] / images * 1000
        return (f"time per image, summed over each stage's threads: {stages}; {STAGES[pace]} sets the pace "
                f"({per_thread:.0f} ms per image on each of its {self.threads[pace]} thread(s))")

    def timed(self, stage: str, fn: Callable[[In], Out]) -> Callable[[In], Out]:
        def run(item: In) -> Out:
            start = time.perf_counter()
            try:
                return fn(item)
            finally:
                with self._lock:
                    self.seconds[stage] += time.perf_counter() - start
        return run


def ordered_map(fn: Callable[[In], Out], items: Iterable[In], workers: int, depth: int) -> Iterator[Out]:
    """`map(fn, items)` on `workers` threads with at most `depth` calls queued, running or
    unclaimed; results in input order. A call's exception is raised where its result is taken;
    queued calls are then cancelled."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="instseg")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read(job: tuple[Path, str, int, Reading]) -> Source | Failure:
    return read_source(*job)


def _flatten(groups: Iterable[list[Outputs] | Prediction | Failure]) -> Iterator[Outputs | Prediction | Failure]:
    for group in groups:
        if isinstance(group, (Prediction, Failure)):
            yield group
        else:
            yield from group


def predict_overlapped(paths: Sequence[Path], names: Sequence[str], runner: Runner, params: ClusterParams,
                       batch_size: int, write: Callable[[Prediction | Failure], Out], workers: int,
                       times: StageTimes | None = None, reading: Reading = FIXED) -> Iterator[Out]:
    """`write(result)` for every input, in `pipeline.predict`'s order, with the stages
    overlapped; images read as `reading` says (`pipeline.read_source`). At most 8 x batch_size
    + 6 x workers images are held at once: read ahead (workers + batch_size), waiting for a
    batch (4 x batch_size), two batches at the network plus the one being handed on, 2 x
    workers at clustering and 2 x workers writing."""
    times = times or StageTimes()
    times.threads.update(read=workers, cluster=workers, write=workers)

    def network(batch: Batch | Tiled | Failure) -> list[Outputs] | Prediction | Failure:
        if isinstance(batch, Tiled):  # tile by tile, clustering included: a large image is its own stage
            return predict_tiled(batch.source, runner, params)
        return batch if isinstance(batch, Failure) else run_network(batch, runner)

    def cluster(item: Outputs | Prediction | Failure) -> Prediction | Failure:
        return item if isinstance(item, (Prediction, Failure)) else cluster_outputs(item, runner.max_instances, params)

    jobs = ((path, name, index, reading) for index, (path, name) in enumerate(zip(paths, names)))
    sources = ordered_map(times.timed("read", _read), jobs, workers, workers + batch_size)
    outputs = ordered_map(times.timed("network", network), batches(sources, runner, batch_size), 1, 2)
    predictions = ordered_map(times.timed("cluster", cluster), _flatten(outputs), workers, 2 * workers)
    # numpy's BLAS on one thread: OpenBLAS threads spin while they wait, and beside the network
    # and the other stages they took the cores (3x fewer images/s on a shared 2-core CPU);
    # clustering's products are too small to gain from more (33 ms per 256 px image either way)
    with threadpool_limits(limits=1, user_api="blas"):
        yield from ordered_map(times.timed("write", write), predictions, workers, 2 * workers)
