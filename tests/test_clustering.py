import numpy as np
import pytest

from instseg.core.clustering import cluster_embeddings, instances_from_outputs, kmeans, relabel_sequential
from instseg.core.metrics import symmetric_best_dice


def blobs(k=4, per=50, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (k, dim))
    points = np.concatenate([c + rng.normal(0, 0.1, (per, dim)) for c in centres])
    return points.astype(np.float32), np.repeat(np.arange(k), per)


def test_kmeans_recovers_separated_clusters():
    points, truth = blobs()
    found = kmeans(points, 4)
    assert symmetric_best_dice(found[None] + 1, truth[None] + 1) == 1.0


def test_more_clusters_than_points():
    points = np.zeros((3, 4), np.float32)
    assert kmeans(points, 10).max() == 0  # identical points -> one cluster, no crash
    assert len(np.unique(kmeans(np.eye(3, dtype=np.float32), 10))) == 3


def test_empty_foreground_gives_all_zero_map():
    out = cluster_embeddings(np.random.rand(4, 8, 8), np.zeros((8, 8), bool), 5)
    assert out.shape == (8, 8) and not out.any()


def test_count_zero_still_yields_one_instance():
    sem = np.zeros((2, 6, 6))
    sem[1, 2:4, 2:4] = 1
    out = instances_from_outputs(sem, np.random.rand(3, 6, 6), count=0.0, max_instances=20)
    assert set(np.unique(out)) == {0, 1} and (out > 0).sum() == 4


def test_nan_embeddings_are_refused():
    emb = np.zeros((2, 4, 4))
    emb[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        cluster_embeddings(emb, np.ones((4, 4), bool), 2)


def test_relabel_sequential():
    assert relabel_sequential(np.array([[0, 7], [3, 7]])).tolist() == [[0, 2], [1, 2]]
