"""Evaluation metrics: point-forecast errors, normalized Gini, clustering scores, paired tests.

Error metrics take ``y`` (targets) and ``y_pred`` of the same shape (numpy or jax
arrays, any shape) and an optional ``mask``: 0/1 or non-negative weights broadcast
to ``y``'s shape (e.g. the ``mask`` of a padded ``Split``). They are jit-compatible
and return f32[] scalars. Masked means divide by the total weight, so a mask of all
zeros yields NaN (an undefined mean), never a silent zero.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from dmeta.types import Array, Key

Alternative = Literal["two-sided", "greater", "less"]


def _weights(y: Array, mask: Array | None) -> Array:
    y = jnp.asarray(y)
    if mask is None:
        return jnp.ones(y.shape, jnp.result_type(y.dtype, jnp.float32))
    return jnp.broadcast_to(jnp.asarray(mask, jnp.result_type(y.dtype, jnp.float32)), y.shape)


def _wmean(values: Array, w: Array) -> Array:
    return jnp.sum(values * w) / jnp.sum(w)


def mse(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Mean squared error ``mean((y_pred - y)^2)``."""
    return _wmean(jnp.square(jnp.asarray(y_pred) - jnp.asarray(y)), _weights(y, mask))


def rmse(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Root mean squared error ``sqrt(mse)``."""
    return jnp.sqrt(mse(y, y_pred, mask))


def mae(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Mean absolute error ``mean(|y_pred - y|)``."""
    return _wmean(jnp.abs(jnp.asarray(y_pred) - jnp.asarray(y)), _weights(y, mask))


def nmae(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Normalized MAE ``sum|y_pred - y| / sum|y|`` (CDLtvS; also known as WAPE)."""
    w = _weights(y, mask)
    return jnp.sum(jnp.abs(jnp.asarray(y_pred) - jnp.asarray(y)) * w) / jnp.sum(jnp.abs(y) * w)


def nrmse(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Normalized RMSE ``rmse / mean(y)`` (CDLtvS, after ZILN)."""
    return rmse(y, y_pred, mask) / _wmean(jnp.asarray(y), _weights(y, mask))


def mape(
    y: Array,
    y_pred: Array,
    mask: Array | None = None,
    *,
    eps: float = 1e-8,
    return_excluded: bool = False,
) -> Array | tuple[Array, Array]:
    """Mean absolute percentage error ``mean(|y_pred - y| / |y|)`` as a fraction (0.1 = 10%).

    Zero targets: samples with ``|y| <= eps`` have no defined percentage error and
    are excluded from the mean (their weight is set to 0). Pass
    ``return_excluded=True`` to also get how many (unmasked) samples were excluded,
    so a report can state it. If every sample is excluded the result is NaN.

    Args:
      y: targets, any shape.
      y_pred: predictions, same shape.
      mask: optional 0/1 mask or non-negative weights broadcast to ``y``.
      eps: targets with ``|y| <= eps`` are excluded.
      return_excluded: also return i32[] number of excluded samples with nonzero mask.

    Returns:
      f32[] MAPE, or ``(mape, n_excluded)``.
    """
    y = jnp.asarray(y)
    w = _weights(y, mask)
    zero = jnp.abs(y) <= eps
    safe_y = jnp.where(zero, 1.0, jnp.abs(y))
    value = _wmean(jnp.abs(jnp.asarray(y_pred) - y) / safe_y, jnp.where(zero, 0.0, w))
    if return_excluded:
        return value, jnp.sum(zero & (w > 0)).astype(jnp.int32)
    return value


def smape(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Symmetric MAPE ``mean(2 |y_pred - y| / (|y| + |y_pred|))`` as a fraction in [0, 2].

    Zero targets are kept (unlike ``mape``): a zero target scores 2 unless the prediction
    is 0 too, which scores 0.
    """
    y, y_pred = jnp.asarray(y), jnp.asarray(y_pred)
    denom = jnp.abs(y) + jnp.abs(y_pred)
    ratio = 2.0 * jnp.abs(y_pred - y) / jnp.where(denom > 0, denom, 1.0)
    return _wmean(ratio, _weights(y, mask))


def _gini_raw(y: Array, order_by: Array, valid: Array) -> Array:
    """ZILN raw Gini ``2 * mean(cumulative share of y) - 1``, order_by descending.

    Ties in ``order_by`` are resolved by their expectation over random tie-breaking:
    within a tie group every ``y`` is replaced by the group mean before the cumulative
    sum, which makes the result independent of input order. Invalid (masked) entries are
    sorted last with ``y = 0`` and left out of the mean.
    """
    n = y.shape[0]
    perm = jnp.lexsort((-order_by, (~valid).astype(jnp.int32)))  # valid first, by desc.
    ys, ks, vs = y[perm], order_by[perm], valid[perm]
    new_group = jnp.concatenate([jnp.ones(1, bool), (ks[1:] != ks[:-1]) | (vs[1:] != vs[:-1])])
    group = jnp.cumsum(new_group) - 1
    group_sum = jax.ops.segment_sum(ys, group, num_segments=n)
    group_count = jax.ops.segment_sum(jnp.ones_like(ys), group, num_segments=n)
    ys = (group_sum / jnp.maximum(group_count, 1.0))[group]
    share = jnp.cumsum(ys) / jnp.sum(ys)
    return 2.0 * jnp.sum(jnp.where(vs, share, 0.0)) / jnp.sum(vs) - 1.0


@jax.jit
def normalized_gini(y: Array, y_pred: Array, mask: Array | None = None) -> Array:
    """Normalized Gini of the LTV literature (ZILN, CDLtvS): model Gini / perfect Gini.

    Customers are ordered by ``y_pred`` (descending); the raw Gini is
    ``2 * mean_i(cumsum(y)_i / sum(y)) - 1`` of the true values in that order, and the
    result divides it by the raw Gini of the ordering by ``y`` itself. 1 means a perfect
    ranking; ties in ``y_pred`` count as their expectation over random tie-breaking
    (deterministic, input-order independent). NaN if ``sum(y) == 0`` (no ranking to
    recover); 1 if all ``y`` are equal (every ordering is perfect).

    Args:
      y: f32[N] non-negative true values (e.g. LTV).
      y_pred: f32[N] predictions (only their order matters).
      mask: optional bool/0-1 [N]; entries with 0 are ignored.

    Returns:
      f32[] normalized Gini.
    """
    y = jnp.asarray(y, jnp.result_type(jnp.asarray(y).dtype, jnp.float32))
    y_pred = jnp.asarray(y_pred, y.dtype)
    valid = jnp.ones(y.shape, bool) if mask is None else jnp.asarray(mask) > 0
    y = jnp.where(valid, y, 0.0)
    return _gini_raw(y, y_pred, valid) / _gini_raw(y, y, valid)


def _cluster_inputs(x: Array, labels: Array) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(x)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"need x: [N, F] and labels: [N], got {x.shape} and {labels.shape}")
    _, codes = np.unique(labels, return_inverse=True)
    k = int(codes.max()) + 1
    if not 2 <= k <= x.shape[0] - 1:
        raise ValueError(f"need 2 <= number of clusters <= N - 1, got {k} clusters, N={len(x)}")
    return x, codes.astype(np.int32), k


def silhouette(
    x: Array,
    labels: Array,
    *,
    sample_size: int | None = None,
    key: Key | None = None,
) -> Array:
    """Mean silhouette coefficient (Euclidean), exact, as ``sklearn.metrics.silhouette_score``.

    ``s(i) = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean distance to the other
    members of i's cluster and ``b_i`` the smallest mean distance to another cluster;
    ``s(i) = 0`` for singleton clusters. Distances are computed row by row
    (memory O(N * (F + K)), time O(N^2 F)).

    Args:
      x: f[N, F] points.
      labels: int[N] cluster labels (any integer values).
      sample_size: if set and ``N > sample_size``, score a random subset of this size
        drawn without replacement with ``key``.
      key: PRNG key for the subset; defaults to ``jax.random.key(0)`` (fixed seed).

    Returns:
      f32[] mean silhouette in [-1, 1].
    """
    x, codes, _ = _cluster_inputs(x, labels)
    if sample_size is not None and x.shape[0] > sample_size:
        key = jax.random.key(0) if key is None else key
        idx = np.asarray(jax.random.choice(key, x.shape[0], (sample_size,), replace=False))
        x, codes, _ = _cluster_inputs(x[idx], codes[idx])
    k = int(codes.max()) + 1
    return _silhouette(jnp.asarray(x), jnp.asarray(codes), k)


@jax.jit(static_argnames="k")
def _silhouette(x: Array, codes: Array, k: int) -> Array:
    onehot = jax.nn.one_hot(codes, k, dtype=x.dtype)  # [N, K]
    # [N, K] summed distance from each point to each cluster.
    sums = jax.lax.map(
        lambda xi: jnp.sqrt(jnp.sum(jnp.square(x - xi), axis=-1)) @ onehot, x, batch_size=128
    )
    counts = onehot.sum(0)
    own_count = counts[codes]
    own = jnp.take_along_axis(sums, codes[:, None], axis=1)[:, 0]
    a = own / jnp.maximum(own_count - 1.0, 1.0)
    b = jnp.min(jnp.where(onehot > 0, jnp.inf, sums / counts), axis=1)
    s = (b - a) / jnp.maximum(a, b)
    return jnp.mean(jnp.where(own_count > 1, jnp.nan_to_num(s), 0.0))


def calinski_harabasz(x: Array, labels: Array) -> Array:
    """Calinski-Harabasz index ``(Tr(B) / (k - 1)) / (Tr(W) / (n - k))``.

    Matches ``sklearn.metrics.calinski_harabasz_score`` (1.0 when ``Tr(W) == 0``).

    Args:
      x: f[N, F] points.
      labels: int[N] cluster labels.

    Returns:
      f32[] the index (higher is better separated).
    """
    x, codes, k = _cluster_inputs(x, labels)
    return _calinski_harabasz(jnp.asarray(x), jnp.asarray(codes), k)


@jax.jit(static_argnames="k")
def _calinski_harabasz(x: Array, codes: Array, k: int) -> Array:
    n = x.shape[0]
    onehot = jax.nn.one_hot(codes, k, dtype=x.dtype)
    counts = onehot.sum(0)
    centroids = (onehot.T @ x) / counts[:, None]  # [K, F]
    between = jnp.sum(counts * jnp.sum(jnp.square(centroids - x.mean(0)), axis=1))
    within = jnp.sum(jnp.square(x - centroids[codes]))
    return jnp.where(within == 0, 1.0, between * (n - k) / (within * (k - 1.0)))


def _paired(a: Array, b: Array) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two paired samples of equal size >= 2, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired samples contain NaN or inf")
    return a, b


def paired_ttest(a: Array, b: Array, alternative: Alternative = "two-sided") -> tuple[float, float]:
    """Paired t-test of ``mean(a - b)`` against 0 (``scipy.stats.ttest_rel``).

    Args:
      a: f[N] scores of method A per unit (seed, segment, ...).
      b: f[N] scores of method B on the same units, same order.
      alternative: ``"greater"`` tests ``mean(a - b) > 0``, ``"less"`` ``< 0``.

    Returns:
      ``(t statistic, p-value)``; ``(0.0, 1.0)`` when all differences are exactly zero
      (no evidence of a difference; scipy would return NaN).
    """
    a, b = _paired(a, b)
    if np.all(a == b):
        return 0.0, 1.0
    res = scipy.stats.ttest_rel(a, b, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def wilcoxon(a: Array, b: Array, alternative: Alternative = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank test on ``a - b`` (``scipy.stats.wilcoxon``, zero differences
    dropped as in scipy's default ``zero_method="wilcox"``).

    Args:
      a: f[N] scores of method A per unit.
      b: f[N] scores of method B on the same units.
      alternative: ``"greater"`` tests that ``a - b`` is shifted above 0, ``"less"`` below.

    Returns:
      ``(statistic, p-value)``; ``(0.0, 1.0)`` when all differences are exactly zero.
    """
    a, b = _paired(a, b)
    if np.all(a == b):
        return 0.0, 1.0
    res = scipy.stats.wilcoxon(a, b, alternative=alternative)
    return float(res.statistic), float(res.pvalue)
