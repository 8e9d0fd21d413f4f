"""Clustering speed and quality, side by side on one machine in one run.

    pip install -e ".[bench]"   # scikit-learn, for the reference KMeans
    python bench/clustering.py RUN_OR_CHECKPOINT [--sizes 256 512] [--images 8] [--threads N]

A trained synthetic model runs on synthetic validation images rendered at each size; its
foreground and embeddings are then clustered by
  - scikit-learn KMeans with the reference settings (n_init=35, max_iter=500, all pixels),
  - our `kmeans` (same k: the counter head's count) and our `meanshift` (no count),
all without post-processing so that only the clustering differs, plus our default
configuration with post-processing as the pipeline runs it. Each gets the same
foreground and k; SBD is against the ground truth. The table gives ms per image, the
speed-up over scikit-learn and the SBD difference; the last lines check the aim (our
kmeans >= 20x faster than the reference at 256 px, SBD within 0.005).

On a loaded machine, multi-threaded BLAS / OpenMP spin-waits make small matrix products
(both sklearn's and ours) erratic: `--threads 1` gives every method the same single core.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
from rich.console import Console
from rich.table import Table

from instseg.data.synthetic import render_plant
from instseg.instances.clustering import ClusterParams, cluster_embeddings, instance_count
from instseg.instances.postprocess import relabel_sequential
from instseg.metrics.scores import symmetric_best_dice

REFERENCE = "sklearn KMeans (n_init=35, max_iter=500)"
AIM_SPEEDUP, AIM_SBD = 20.0, 0.005


def sklearn_kmeans(embedding: np.ndarray, foreground: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    labels = np.zeros(foreground.shape, dtype=np.int32)
    points = embedding[:, foreground].T
    if len(points):
        k = min(k, len(np.unique(points, axis=0)))
        model = KMeans(n_clusters=k, n_init=35, max_iter=500, random_state=seed)
        labels[foreground] = model.fit_predict(points) + 1
    return relabel_sequential(labels)


def network_outputs(runner, size: int, images: int, seed: int):
    """(foreground, embedding, k, ground truth) per synthetic validation image at `size` px."""
    samples = []
    for index in range(images):
        image, gt = render_plant(seed, index, size, "val")
        semantic, embedding, count = runner(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        samples.append((semantic[0, 1] > semantic[0, 0], embedding[0], instance_count(count[0, 0], runner.max_instances),
                        gt))
    return samples


def methods(base: ClusterParams) -> dict:
    raw = replace(base, min_size=0, fill_holes=False)
    kmeans, meanshift = replace(raw, method="kmeans"), replace(raw, method="meanshift")
    return {
        REFERENCE: lambda emb, fg, k: sklearn_kmeans(emb, fg, k, base.seed),
        "instseg kmeans": lambda emb, fg, k: cluster_embeddings(emb, fg, k, kmeans),
        "instseg meanshift": lambda emb, fg, k: cluster_embeddings(emb, fg, k, meanshift),
        f"instseg default ({base.method} + post-processing)": lambda emb, fg, k: cluster_embeddings(emb, fg, k, base),
    }


def measure(samples, cluster) -> tuple[float, float]:
    """(ms per image, mean SBD)."""
    seconds, sbd = 0.0, []
    for foreground, embedding, k, gt in samples:
        start = time.perf_counter()
        labels = cluster(embedding, foreground, k)
        seconds += time.perf_counter() - start
        sbd.append(symmetric_best_dice(labels, gt))
    return 1000 * seconds / len(samples), float(np.mean(sbd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="run directory or checkpoint of a model trained on synthetic leaves")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--images", type=int, default=8, help="validation images per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS / OpenMP threads for every method (default: the libraries' own)")
    args = parser.parse_args()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)

    from instseg.predict.torch_runner import TorchRunner

    runner = TorchRunner.from_checkpoint(args.checkpoint, "cpu")
    console = Console()
    console.print(f"model: {runner.description}; {args.images} synthetic validation images per size; "
                  f"threads: {args.threads or 'library defaults'}", highlight=False)
    table = Table(title="clustering: ms per image and SBD (same foreground and k for every method)")
    for column in ("size", "method", "ms / image", "speed-up vs sklearn", "SBD", "SBD - sklearn"):
        table.add_column(column, justify="left" if column == "method" else "right")
    verdicts = []
    for size in args.sizes:
        samples = network_outputs(runner, size, args.images, args.seed)
        results = {name: measure(samples, cluster) for name, cluster in methods(runner.cluster).items()}
        ref_ms, ref_sbd = results[REFERENCE]
        for name, (ms, sbd) in results.items():
            table.add_row(f"{size}x{size}", name, f"{ms:.1f}", f"{ref_ms / ms:.1f}x", f"{sbd:.4f}", f"{sbd - ref_sbd:+.4f}",
                          end_section=name == list(results)[-1])
        ms, sbd = results["instseg kmeans"]
        ok = ref_ms / ms >= AIM_SPEEDUP and abs(sbd - ref_sbd) <= AIM_SBD
        verdicts.append(f"{size}px: instseg kmeans is {ref_ms / ms:.1f}x faster than the reference, SBD "
                        f"{sbd - ref_sbd:+.4f} -> {'meets' if ok else 'misses'} the aim "
                        f"(>= {AIM_SPEEDUP:.0f}x, |dSBD| <= {AIM_SBD})")
    console.print(table)
    for line in verdicts:
        console.print(line, highlight=False)


if __name__ == "__main__":
    main()
