"""k-means++ with outlier removal against scikit-learn."""

import jax
import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from dmeta.cluster.kmeans import (
    farthest_removed,
    kmeans,
    kmeans_plusplus,
    lloyd,
    outlier_weights,
    refit,
)


def test_inertia_matches_sklearn_on_blobs():
    for seed in range(3):  # one compilation, three data sets and seeds
        x, _ = make_blobs(600, centers=5, n_features=4, cluster_std=1.5, random_state=seed)
        x = x.astype(np.float32)
        ref = KMeans(5, init="k-means++", n_init=4, random_state=seed).fit(x)
        ours = kmeans(jax.random.key(seed), x, 5, n_init=4)
        assert abs(float(ours.inertia) - ref.inertia_) / ref.inertia_ < 0.01
        assert np.all(np.asarray(ours.weights) == 1)


def test_seeding_picks_distinct_data_points():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    c = np.asarray(kmeans_plusplus(jax.random.key(0), x, 6))
    assert len({tuple(r) for r in c}) == 6
    assert all((x == r).all(1).any() for r in c)


def test_outliers_get_zero_weight_and_do_not_move_centroids():
    x, y = make_blobs(n_samples=300, centers=[[0, 0], [10, 10]], cluster_std=0.5, random_state=0)
    far = np.array([[0.0, 6.0], [10.0, 4.0]])
    x = np.concatenate([x, far]).astype(np.float32)
    res = kmeans(jax.random.key(0), x, 2, outlier_z=3.0)
    w = np.asarray(res.weights)
    assert w[-2:].tolist() == [0.0, 0.0]
    assert w[:-2].mean() > 0.97
    inlier_means = np.stack([x[:-2][y == i].mean(0) for i in range(2)])
    got = np.asarray(res.centroids)[np.argsort(np.asarray(res.centroids)[:, 0])]
    np.testing.assert_allclose(got, inlier_means[np.argsort(inlier_means[:, 0])], atol=0.05)


def test_outlier_weights_threshold_by_hand():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [20.0]], np.float32)
    c = np.array([[5.0]], np.float32)  # distances 5, 4, 3, 2, 15: mean 5.8, std ~4.66
    np.testing.assert_array_equal(outlier_weights(x, c, 1.0), [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(outlier_weights(x, c, None), [1, 1, 1, 1, 1])


def test_farthest_removed_by_hand():
    x = np.array([[0.0], [1.0], [4.0], [10.0], [13.0], [10.5]], np.float32)
    c = np.array([[1.0], [10.0]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])  # distances 1, 0, 3, 0, 3, 0.5: ties by index
    np.testing.assert_array_equal(farthest_removed(x, c, labels, 2 / 6), [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(farthest_removed(x, c, labels, 0.0), [1] * 6)


def test_refit_follows_points_that_moved():
    """From stale centroids, ``refit`` reaches the moved clusters' (inlier) means, as a fresh
    ``kmeans`` does."""
    x, y = make_blobs(n_samples=300, centers=[[0, 0], [10, 10]], cluster_std=0.5, random_state=1)
    x = x.astype(np.float32)
    stale = np.array([[3.0, 3.0], [7.0, 7.0]], np.float32)
    res = refit(x + 2.0, stale, outlier_z=3.0)
    means = np.stack([(x + 2.0)[y == i].mean(0) for i in range(2)])
    got = np.asarray(res.centroids)[np.argsort(np.asarray(res.centroids)[:, 0])]
    np.testing.assert_allclose(got, means[np.argsort(means[:, 0])], atol=0.05)
    assert np.asarray(res.weights).mean() > 0.97


def test_outlier_rule_keeps_a_cluster_of_identical_points():
    """Equal distances have std 0: the threshold is their mean at any ``outlier_z``, not NaN
    (``E[d^2] - mean^2`` went below 0 in float32) nor under some of them (distances from
    ``sq_distances``' expansion differed by its rounding); the old rule flagged the points in
    11 of these 40 cases at z = 0 and 7 at z = 1."""
    rng = np.random.default_rng(0)
    for n in range(5, 25):
        p = rng.normal(0, 10, (1, 3)).astype(np.float32)
        x = np.repeat(p, n, 0)
        for c in (x.mean(0, keepdims=True), p + rng.normal(size=(1, 3)).astype(np.float32)):
            for z in (0.0, 1.0):
                np.testing.assert_array_equal(outlier_weights(x, c, z), np.ones(n))


def test_relocation_gives_an_empty_cluster_a_point():
    """A centroid that no point is nearest to moves onto the point of weight > 0 farthest from
    its centroid (then Lloyd goes on, and every cluster keeps points); off by default."""
    x, _ = make_blobs(n_samples=200, centers=[[0, 0], [10, 10]], cluster_std=1.0, random_state=0)
    x = x.astype(np.float32)
    c = np.array([[0.0, 0.0], [10.0, 10.0], [100.0, -100.0]], np.float32)
    own = np.min(((x[:, None] - c[None, :2]) ** 2).sum(-1), axis=1)
    weights = np.ones(len(x), np.float32)
    weights[np.argmax(own)] = 0.0  # the farthest point is an outlier: the next one is taken
    one = lloyd(x, c, weights, max_iter=1, tol=0.0, relocate_empty=True)
    np.testing.assert_array_equal(one[2], x[np.argsort(-own)[1]])
    kept = lloyd(x, c, np.ones(len(x), np.float32), max_iter=300, tol=1e-6)
    np.testing.assert_array_equal(kept[2], c[2])
    for res in (refit(x, c, outlier_z=1.0, relocate_empty=True), refit(x, c, relocate_empty=True)):
        assert np.all(np.bincount(np.asarray(res.labels)[np.asarray(res.weights) > 0]) > 0)
    np.testing.assert_array_equal(refit(x, c, outlier_z=1.0).centroids[2], c[2])
