"""k-means++ with outlier removal in JAX (C2M 3.1.2).

Seeding is greedy k-means++ (D^2 sampling with ``2 + log k`` local trials, as scikit-learn),
Lloyd iterations run in ``lax.while_loop``, restarts are ``vmap``-ed and the lowest inertia wins.
Outlier removal: after the fit, a point is an outlier when its distance to its centroid exceeds
``mean + outlier_z * std`` of the distances within its cluster; outliers get weight 0 (eq. 6) and
the centroids are re-estimated from the inliers. ``farthest_removed`` removes a given share of
points by their distance to their own centroid instead (for methods without an outlier rule).
Lloyd iterations can move the centroid of a cluster that no (inlier) point is nearest to onto
the inlier farthest from its centroid, as scikit-learn does (``relocate_empty``; off by default).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """Attributes: centroids f[K, F]; labels i32[N]; weights f[N] (0 for outliers, else 1);
    inertia f[] (sum of squared distances of the inliers to their centroid)."""

    centroids: jax.Array
    labels: jax.Array
    weights: jax.Array
    inertia: jax.Array


def sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Squared Euclidean distances ``f[N, K]`` between ``x: f[N, F]`` and ``centroids: f[K, F]``."""
    d = (
        jnp.sum(x * x, axis=1, keepdims=True)
        - 2.0 * x @ centroids.T
        + jnp.sum(centroids * centroids, axis=1)[None, :]
    )
    return jnp.maximum(d, 0.0)


def kmeans_plusplus(key: jax.Array, x: jax.Array, k: int, n_trials: int | None = None) -> jax.Array:
    """Greedy k-means++ seeding. ``x: f[N, F]`` -> centroids ``f[K, F]``."""
    x = jnp.asarray(x)
    n = x.shape[0]
    n_trials = n_trials or 2 + int(math.log(k))
    key, first = jax.random.split(key)
    c0 = x[jax.random.randint(first, (), 0, n)]
    closest = jnp.sum((x - c0) ** 2, axis=1)
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(c0)

    def body(i, carry):
        centroids, closest, key = carry
        key, sub = jax.random.split(key)
        candidates = jax.random.choice(sub, n, (n_trials,), p=closest / closest.sum())
        cand_closest = jnp.minimum(closest[None, :], sq_distances(x, x[candidates]).T)
        best = jnp.argmin(cand_closest.sum(axis=1))
        return centroids.at[i].set(x[candidates[best]]), cand_closest[best], key

    centroids, _, _ = jax.lax.fori_loop(1, k, body, (centroids, closest, key))
    return centroids


def _update(
    x: jax.Array, labels: jax.Array, weights: jax.Array, old: jax.Array, relocate_empty: bool
) -> jax.Array:
    """Weighted means per cluster. An empty cluster (no weight) keeps its old centroid, or
    with ``relocate_empty`` the i-th empty one moves onto the i-th farthest point of weight > 0
    from its old centroid (ties by index)."""
    onehot = jax.nn.one_hot(labels, old.shape[0], dtype=x.dtype) * weights[:, None]
    counts = onehot.sum(0)
    means = (onehot.T @ x) / jnp.maximum(counts, 1e-12)[:, None]
    empty = counts <= 0
    if relocate_empty:
        d2 = jnp.where(weights > 0, jnp.sum((x - old[labels]) ** 2, axis=1), -1.0)
        farthest = jax.lax.top_k(d2, old.shape[0])[1]
        old = jnp.where(empty[:, None], x[farthest[jnp.cumsum(empty) - 1]], old)
    return jnp.where(empty[:, None], old, means)


def lloyd(
    x: jax.Array,
    centroids: jax.Array,
    weights: jax.Array,
    *,
    max_iter: int,
    tol: float,
    relocate_empty: bool = False,
) -> jax.Array:
    """Weighted Lloyd iterations from ``centroids`` until the centroid shift is below ``tol``
    (``relocate_empty``: as in ``_update``; a relocation is a shift, so the iterations go on)."""
    x = jnp.asarray(x)

    def cond(carry):
        _, shift, it = carry
        return (it < max_iter) & (shift > tol)

    def body(carry):
        c, _, it = carry
        labels = jnp.argmin(sq_distances(x, c), axis=1)
        new = _update(x, labels, weights, c, relocate_empty)
        return new, jnp.sum((new - c) ** 2), it + 1

    return jax.lax.while_loop(cond, body, (centroids, jnp.inf, 0))[0]


def outlier_weights(x: jax.Array, centroids: jax.Array, outlier_z: float | None) -> jax.Array:
    """Weights ``f[N]``: 0 where a point's distance to its nearest centroid exceeds
    ``mean + outlier_z * std`` of the distances in its cluster, else 1 (all 1 if None). The
    distances are taken from the differences (``sq_distances``' expansion would give equal
    points distances that differ by its rounding, ~1e-2 at |x| ~ 10, and flag some of them)."""
    labels = jnp.argmin(sq_distances(x, centroids), axis=1)
    if outlier_z is None:
        return jnp.ones(x.shape[0], x.dtype)
    dist = jnp.sqrt(jnp.sum((x - centroids[labels]) ** 2, axis=1))
    onehot = jax.nn.one_hot(labels, centroids.shape[0], dtype=x.dtype)
    counts = jnp.maximum(onehot.sum(0), 1.0)
    mean = (onehot.T @ dist) / counts
    std = jnp.sqrt((onehot.T @ (dist - mean[labels]) ** 2) / counts)  # centred: never < 0
    threshold = (mean + outlier_z * std)[labels]
    return (dist <= threshold + 1e-6).astype(x.dtype)


def farthest_removed(
    x: jax.Array, centroids: jax.Array, labels: jax.Array, share: float
) -> jax.Array:
    """bool[N]: False for the ``round(share * N)`` points farthest from their own centroid
    (``x: f[N, F]``, ``centroids: f[K, F]``, ``labels: i[N]``; ties by index), else True."""
    x, centroids = jnp.asarray(x), jnp.asarray(centroids)
    d2 = jnp.sum((x - centroids[jnp.asarray(labels)]) ** 2, axis=1)
    n_out = int(round(share * x.shape[0]))
    order = jnp.argsort(-d2, stable=True)
    return jnp.ones(x.shape[0], bool).at[order[:n_out]].set(False)


def kmeans(
    key: jax.Array,
    x: jax.Array,
    k: int,
    *,
    n_init: int = 4,
    max_iter: int = 300,
    tol: float = 1e-6,
    outlier_z: float | None = None,
) -> KMeansResult:
    """k-means++ with optional outlier removal.

    Args:
      key: PRNG key.
      x: f[N, F] points.
      k: number of clusters.
      n_init: restarts (vmapped); the one with the lowest inertia is kept.
      max_iter: Lloyd iterations at most per fit.
      tol: stop when the summed squared centroid shift is below this.
      outlier_z: outlier threshold in within-cluster standard deviations (None: no removal).

    Returns:
      ``KMeansResult``; ``labels`` are given for all points, outliers included.
    """
    return _kmeans(key, jnp.asarray(x), k, n_init, max_iter, tol, outlier_z)


@jax.jit(static_argnames=("k", "n_init", "max_iter", "outlier_z"))
def _kmeans(key, x, k, n_init, max_iter, tol, outlier_z):
    ones = jnp.ones(x.shape[0], x.dtype)

    def single(key):
        c = lloyd(x, kmeans_plusplus(key, x, k), ones, max_iter=max_iter, tol=tol)
        return c, jnp.sum(jnp.min(sq_distances(x, c), axis=1))

    centroids, inertia = jax.vmap(single)(jax.random.split(key, n_init))
    return _without_outliers(x, centroids[jnp.argmin(inertia)], outlier_z, max_iter, tol)


def _without_outliers(x, centroids, outlier_z, max_iter, tol, relocate_empty=False) -> KMeansResult:
    """Outlier weights against ``centroids``, then the centroids re-estimated on the inliers."""
    weights = outlier_weights(x, centroids, outlier_z)
    if outlier_z is not None:
        centroids = lloyd(
            x, centroids, weights, max_iter=max_iter, tol=tol, relocate_empty=relocate_empty
        )
    d2 = sq_distances(x, centroids)
    labels = jnp.argmin(d2, axis=1).astype(jnp.int32)
    return KMeansResult(centroids, labels, weights, jnp.sum(weights * jnp.min(d2, axis=1)))


@jax.jit(static_argnames=("outlier_z", "max_iter", "relocate_empty"))
def refit(
    x: jax.Array,
    centroids: jax.Array,
    *,
    outlier_z: float | None = None,
    max_iter: int = 300,
    tol: float = 1e-6,
    relocate_empty: bool = False,
) -> KMeansResult:
    """``kmeans`` from given ``centroids`` f[K, F] instead of k-means++ seeds: Lloyd
    iterations on ``x`` f[N, F], then the same outlier removal (e.g. to follow points that
    moved since the centroids were fitted). ``relocate_empty``: a cluster that no point (in
    the iterations after the removal: no inlier) is nearest to gets a point (``_update``)."""
    ones = jnp.ones(x.shape[0], x.dtype)
    c = lloyd(x, centroids, ones, max_iter=max_iter, tol=tol, relocate_empty=relocate_empty)
    return _without_outliers(x, c, outlier_z, max_iter, tol, relocate_empty)
