import numpy as np
import pytest

from instseg.instances.clustering import ClusterParams, cluster_embeddings, instances_from_outputs, kmeans, meanshift
from instseg.instances.postprocess import fill_holes, postprocess, relabel_sequential, remove_small, split_pieces
from instseg.metrics.scores import symmetric_best_dice
from instseg.errors import ConfigError, DataError

METHODS = ["kmeans", "meanshift", "regions"]


def blobs(k=4, per=50, dim=8, seed=0, spread=0.1):
    """k tight clusters whose centers lie ~7 apart (more than 2 x the default bandwidth)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, (k, dim))
    points = np.concatenate([c + rng.normal(0, spread, (per, dim)) for c in centers])
    return points.astype(np.float32), np.repeat(np.arange(k), per)


def test_kmeans_recovers_separated_clusters():
    points, truth = blobs()
    found = kmeans(points, 4)
    assert symmetric_best_dice(found[None] + 1, truth[None] + 1) == 1.0


def test_meanshift_finds_the_number_of_clusters_itself():
    points, truth = blobs(k=6, per=40)
    found = meanshift(points, ClusterParams(method="meanshift"))
    assert len(np.unique(found)) == 6
    assert symmetric_best_dice(found[None] + 1, truth[None] + 1) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_subsampled_fit_still_labels_every_point_right(method):
    points, truth = blobs(k=12, per=800, dim=16, spread=0.15)  # 9600 points > sample_size
    params = ClusterParams(method=method, sample_size=1024)
    found = kmeans(points, 12, params) if method == "kmeans" else meanshift(points, params)
    assert symmetric_best_dice(found[None] + 1, truth[None] + 1) == 1.0


def test_meanshift_bandwidth_decides_what_is_one_instance():
    points = np.array([[0.0], [0.2], [3.0], [3.2]], np.float32)
    assert len(np.unique(meanshift(points, ClusterParams(method="meanshift", bandwidth=0.5)))) == 2
    assert len(np.unique(meanshift(points, ClusterParams(method="meanshift", bandwidth=5.0)))) == 1


def test_meanshift_drops_single_point_outliers_into_their_nearest_cluster():
    points, _ = blobs(k=2, per=30)
    points = np.concatenate([points, points[:1] + 4.0])  # one stray point between nothing
    found = meanshift(points, ClusterParams(method="meanshift"))
    assert len(np.unique(found)) == 2


def test_meanshift_on_structureless_embeddings_stops_at_max_clusters():
    points = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    found = meanshift(points, ClusterParams(method="meanshift", bandwidth=0.3, max_clusters=10))
    assert len(np.unique(found)) <= 10 and len(found) == 3000


def test_more_clusters_than_points():
    points = np.zeros((3, 4), np.float32)
    assert kmeans(points, 10).max() == 0  # identical points -> one cluster, no crash
    assert len(np.unique(kmeans(np.eye(3, dtype=np.float32), 10))) == 3


@pytest.mark.parametrize("method", METHODS)
def test_more_instances_asked_than_foreground_pixels(method):
    emb = np.random.default_rng(0).normal(size=(4, 5, 5)).astype(np.float32)
    fg = np.zeros((5, 5), bool)
    fg[0, :2] = True
    out = cluster_embeddings(emb, fg, 20, ClusterParams(method=method, bandwidth=0.01))
    assert set(np.unique(out[fg])) <= {1, 2} and not out[~fg].any()


@pytest.mark.parametrize("method", METHODS)
def test_empty_foreground_gives_all_zero_map(method):
    out = cluster_embeddings(np.random.rand(4, 8, 8), np.zeros((8, 8), bool), 5, ClusterParams(method=method))
    assert out.shape == (8, 8) and out.dtype == np.int32 and not out.any()


def test_count_zero_still_yields_one_instance():
    sem = np.zeros((2, 6, 6))
    sem[1, 2:4, 2:4] = 1
    out = instances_from_outputs(sem, np.random.rand(3, 6, 6), count=0.0, max_instances=20)
    assert set(np.unique(out)) == {0, 1} and (out > 0).sum() == 4


@pytest.mark.parametrize("method", METHODS)
def test_a_single_instance(method):
    sem = np.zeros((2, 8, 8))
    sem[1, 1:7, 1:7] = 1
    emb = np.full((3, 8, 8), 0.3) + np.random.default_rng(0).normal(0, 0.05, (3, 8, 8))
    out = instances_from_outputs(sem, emb, count=1 / 20, max_instances=20, params=ClusterParams(method=method))
    assert out[1:7, 1:7].min() == 1 and out.max() == 1 and (out > 0).sum() == 36


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_refused(method, bad):
    emb = np.zeros((2, 4, 4))
    emb[0, 0, 0] = bad
    with pytest.raises(DataError, match="NaN or Inf"):
        cluster_embeddings(emb, np.ones((4, 4), bool), 2, ClusterParams(method=method))


def test_instances_follow_embeddings_on_an_image():
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5], labels[1:5, 7:11], labels[7:11, 2:10] = 1, 2, 3
    emb = np.stack([labels * 3.0, -labels * 2.0]).astype(np.float32)
    sem = np.stack([(labels == 0) * 1.0, (labels > 0) * 1.0])
    for method in METHODS:
        out = instances_from_outputs(sem, emb, 3 / 20, 20, ClusterParams(method=method))
        assert symmetric_best_dice(out, labels) == 1.0


def test_same_seed_same_result_and_params_are_validated():
    points, _ = blobs(k=5, per=100, spread=0.8)
    for method in METHODS:
        params = ClusterParams(method=method)
        run = kmeans if method == "kmeans" else (lambda p, k, prm: meanshift(p, prm))
        assert np.array_equal(run(points, 5, params), run(points, 5, params))
    with pytest.raises(ConfigError, match="unknown clustering method 'dbscan'"):
        ClusterParams(method="dbscan")
    with pytest.raises(ConfigError, match="bandwidth=0"):
        ClusterParams(bandwidth=0)


def test_override_and_run_defaults():
    base = ClusterParams.from_config({"cluster": "meanshift", "delta_d": 2.0, "seed": 7})
    assert (base.method, base.bandwidth, base.seed) == ("meanshift", 2.0, 7)
    changed = base.override(method="kmeans", min_size=None, fill_holes=False)
    assert (changed.method, changed.min_size, changed.fill_holes, changed.bandwidth) == ("kmeans", 0, False, 2.0)


def test_relabel_sequential():
    assert relabel_sequential(np.array([[0, 7], [3, 7]])).tolist() == [[0, 2], [1, 2]]


def test_remove_small_drops_instances_under_min_size():
    labels = np.array([[1, 1, 1, 0], [2, 0, 3, 3]])
    assert remove_small(labels, 2).tolist() == [[1, 1, 1, 0], [0, 0, 3, 3]]
    assert remove_small(labels, 0) is labels


def test_fill_holes_only_fills_background_enclosed_by_one_instance():
    labels = np.zeros((7, 9), np.int64)
    labels[1:6, 1:5] = 1
    labels[3, 2] = 0  # a hole inside instance 1 -> filled
    labels[1:6, 5:8] = 2
    labels[3, 4:6] = 0  # a gap between instances 1 and 2 -> stays background
    labels[0, 6] = 0  # touches the border -> stays background
    filled = fill_holes(labels)
    assert filled[3, 2] == 1
    assert filled[3, 4] == 0 and filled[3, 5] == 0
    assert (filled != labels).sum() == 1


def test_postprocess_drops_fragments_then_fills_the_hole_they_leave():
    labels = np.zeros((6, 6), np.int64)
    labels[1:5, 1:5] = 4
    labels[2, 2] = 9  # a one-pixel fragment inside instance 4
    out = postprocess(labels, min_size=2)
    assert out[1:5, 1:5].min() == 1 and out.max() == 1
    kept = postprocess(labels, min_size=2, holes=False)
    assert kept[2, 2] == 0 and kept.max() == 1


def test_split_pieces_keeps_the_largest_piece_and_absorbs_specks():
    labels = np.zeros((6, 12), np.int32)
    labels[0:4, 0:4] = 1  # instance 1: a 16 px piece ...
    labels[0:3, 8:11] = 1  # ... and a 9 px piece far away: an instance of its own
    labels[4:6, 0:4] = 2
    labels[5, 11] = 2  # a 1 px speck of instance 2 beside nothing of its own
    labels[4, 8] = 3  # a one-piece instance, however small, stays itself
    out = split_pieces(labels)
    assert len(np.unique(out[0:3, 8:11])) == 1 and out[0, 8] not in (0, 1, 2, 3)
    assert (out[0:4, 0:4] == 1).all() and (out[4:6, 0:4] == 2).all()
    assert out[5, 11] != 2 and out[5, 11] != 0  # the speck joined the nearest kept pixel's instance
    assert out[4, 8] == 3


def test_regions_separate_distant_objects_whose_embeddings_collide_and_split_touching_ones():
    """Three objects: two far apart with the SAME embedding (k-means or meanshift would merge them),
    and a third touching the second with a different embedding."""
    truth = np.zeros((20, 40), np.int32)
    truth[2:8, 2:8] = 1
    truth[10:18, 20:26] = 2
    truth[10:18, 26:32] = 3
    embedding = np.zeros((4, 20, 40), np.float32)
    embedding[0][truth == 3] = 4.0
    embedding += np.random.default_rng(0).normal(0, 0.05, embedding.shape).astype(np.float32)
    found = cluster_embeddings(embedding, truth > 0, 1, ClusterParams(method="regions"))
    assert symmetric_best_dice(found, truth) == 1.0


def test_regions_scale_to_hundreds_of_instances():
    truth = np.zeros((256, 256), np.int32)
    for i in range(300):  # 300 separate 4x4 nuclei on a grid, all with one embedding
        y, x = divmod(i, 18)
        truth[y * 14 + 2:y * 14 + 6, x * 14 + 2:x * 14 + 6] = i + 1
    embedding = np.ones((8, 256, 256), np.float32)
    found = cluster_embeddings(embedding, truth > 0, 1, ClusterParams(method="regions"))
    assert found.max() == 300 and symmetric_best_dice(found, truth) == 1.0
