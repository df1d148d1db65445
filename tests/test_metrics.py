"""dmeta.metrics against numpy / scikit-learn / scipy references."""

from __future__ import annotations

import functools
import itertools

import jax
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from dmeta import metrics

RNG = np.random.default_rng(0)
Y = RNG.gamma(2.0, 2.0, size=(4, 6)).astype(np.float32)
Y_PRED = (Y + RNG.normal(0.0, 1.0, size=Y.shape)).astype(np.float32)
MASK = (RNG.random(Y.shape) > 0.3).astype(np.float32)


def _close(actual, expected, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol)


def test_errors_match_sklearn():
    y, p = Y.ravel().astype(np.float64), Y_PRED.ravel().astype(np.float64)
    _close(metrics.mse(Y, Y_PRED), sklearn.metrics.mean_squared_error(y, p))
    _close(metrics.rmse(Y, Y_PRED), np.sqrt(sklearn.metrics.mean_squared_error(y, p)))
    _close(metrics.mae(Y, Y_PRED), sklearn.metrics.mean_absolute_error(y, p))
    _close(metrics.mape(Y, Y_PRED), sklearn.metrics.mean_absolute_percentage_error(y, p))
    _close(metrics.nmae(Y, Y_PRED), np.abs(p - y).sum() / np.abs(y).sum())
    _close(metrics.nrmse(Y, Y_PRED), np.sqrt(np.mean((p - y) ** 2)) / y.mean())


def test_masked_errors_match_weighted_numpy():
    y, p, w = (a.astype(np.float64) for a in (Y, Y_PRED, MASK))
    sel = w > 0
    _close(metrics.mse(Y, Y_PRED, MASK), np.mean((p - y)[sel] ** 2))
    _close(metrics.mae(Y, Y_PRED, MASK), np.mean(np.abs(p - y)[sel]))
    _close(metrics.nmae(Y, Y_PRED, MASK), np.abs(p - y)[sel].sum() / np.abs(y[sel]).sum())
    _close(metrics.nrmse(Y, Y_PRED, MASK), np.sqrt(np.mean((p - y)[sel] ** 2)) / y[sel].mean())
    _close(metrics.mape(Y, Y_PRED, MASK), np.mean(np.abs(p - y)[sel] / y[sel]))
    weights = RNG.random(Y.shape[-1])  # broadcast over the leading axis
    ref = sklearn.metrics.mean_squared_error(y, p, sample_weight=None, multioutput="raw_values")
    _close(metrics.mse(Y, Y_PRED, weights), np.sum(ref * weights) / weights.sum())
    assert np.isnan(metrics.mse(Y, Y_PRED, np.zeros_like(MASK)))


def test_errors_are_jittable():
    _close(jax.jit(metrics.rmse)(Y, Y_PRED, MASK), metrics.rmse(Y, Y_PRED, MASK))
    mape = jax.jit(functools.partial(metrics.mape, return_excluded=True))
    value, excluded = mape(Y, Y_PRED)
    _close(value, metrics.mape(Y, Y_PRED))
    assert int(excluded) == 0


def test_mape_excludes_zero_targets():
    y = np.array([0.0, 2.0, 0.0, 4.0, 5.0], np.float32)
    p = np.array([1.0, 1.0, 3.0, 5.0, 5.0], np.float32)
    value, excluded = metrics.mape(y, p, return_excluded=True)
    _close(value, np.mean([0.5, 0.25, 0.0]))
    assert int(excluded) == 2
    mask = np.array([1, 1, 0, 1, 0], np.float32)  # a masked zero is not counted as excluded
    value, excluded = metrics.mape(y, p, mask, return_excluded=True)
    _close(value, np.mean([0.5, 0.25]))
    assert int(excluded) == 1
    _close(metrics.mape(y, p, eps=2.5), np.mean([0.25, 0.0]))
    assert np.isnan(metrics.mape(np.zeros(3), np.ones(3)))


def test_smape_keeps_zero_targets():
    y = np.array([0.0, 2.0, 0.0, 4.0], np.float32)
    p = np.array([1.0, 1.0, 0.0, 4.0], np.float32)
    _close(metrics.smape(y, p), np.mean([2.0, 2.0 / 3.0, 0.0, 0.0]))
    _close(metrics.smape(y, p, np.array([0, 1, 1, 0], np.float32)), np.mean([2.0 / 3.0, 0.0]))


def _gini_reference(y, pred):
    """ZILN: raw Gini ``2 * mean(cumsum share) - 1`` ordered by ``pred``, normalized."""

    def raw(order_by):
        share = np.cumsum(y[np.argsort(-order_by, kind="stable")]) / y.sum()
        return 2.0 * share.mean() - 1.0

    return raw(pred) / raw(y)


def test_normalized_gini_matches_reference():
    y = RNG.gamma(0.5, 10.0, size=50)
    pred = y + RNG.normal(0.0, 5.0, size=50)
    _close(metrics.normalized_gini(y, pred), _gini_reference(y, pred), rtol=1e-4)
    assert metrics.normalized_gini(y, -y) < 0


def test_normalized_gini_perfect_and_monotone_invariant():
    y = RNG.gamma(0.5, 10.0, size=40)
    _close(metrics.normalized_gini(y, y), 1.0)
    _close(metrics.normalized_gini(y, np.log1p(y) * 3.0 + 7.0), 1.0)
    pred = y + RNG.normal(0.0, 5.0, size=40)
    base = metrics.normalized_gini(y, pred)
    for transformed in (2.0 * pred - 1.0, np.exp(pred / 20.0), np.arctan(pred)):
        _close(metrics.normalized_gini(y, transformed), base)


def test_normalized_gini_ties_are_expected_value_and_order_free():
    y = np.array([5.0, 0.0, 3.0, 1.0, 0.0, 8.0])
    pred = np.array([1.0, 1.0, 2.0, 0.0, 2.0, 1.0])  # two tie groups
    groups = [np.flatnonzero(pred == v) for v in (2.0, 1.0, 0.0)]  # descending pred
    ginis = [  # every tie-breaking, each equally likely
        _gini_reference(y[np.concatenate(order)], -np.arange(6.0))
        for order in itertools.product(*(itertools.permutations(g) for g in groups))
    ]
    _close(metrics.normalized_gini(y, pred), np.mean(ginis))
    perm = RNG.permutation(6)
    _close(metrics.normalized_gini(y[perm], pred[perm]), metrics.normalized_gini(y, pred))


def test_normalized_gini_mask_and_degenerate():
    y = RNG.gamma(0.5, 10.0, size=12)
    pred = y + RNG.normal(0.0, 5.0, size=12)
    mask = np.arange(12) < 8
    _close(metrics.normalized_gini(y, pred, mask), metrics.normalized_gini(y[:8], pred[:8]))
    _close(metrics.normalized_gini(np.ones(5), np.arange(5.0)), 1.0)
    assert np.isnan(metrics.normalized_gini(np.zeros(5), np.arange(5.0)))


def _blobs(n_per=(7, 9, 1), dim=3, seed=1):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(3.0 * k, 1.0, (n, dim)) for k, n in enumerate(n_per)])
    labels = np.repeat(np.array([10, -4, 3]), n_per)  # arbitrary label values, a singleton
    return x.astype(np.float32), labels


def test_clustering_scores_match_sklearn():
    x, labels = _blobs()
    _close(metrics.silhouette(x, labels), sklearn.metrics.silhouette_score(x, labels), rtol=1e-4)
    _close(
        metrics.calinski_harabasz(x, labels),
        sklearn.metrics.calinski_harabasz_score(x, labels),
        rtol=1e-4,
    )
    same = np.zeros((4, 2), np.float32)
    _close(metrics.calinski_harabasz(same, np.array([0, 0, 1, 1])), 1.0)


def test_silhouette_subsample_and_errors():
    x, labels = _blobs((20, 25, 15))
    key = jax.random.key(4)
    idx = np.asarray(jax.random.choice(key, len(x), (30,), replace=False))
    expected = sklearn.metrics.silhouette_score(x[idx], labels[idx])
    _close(metrics.silhouette(x, labels, sample_size=30, key=key), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="number of clusters"):
        metrics.silhouette(x, np.zeros(len(x), int))
    with pytest.raises(ValueError, match="labels"):
        metrics.calinski_harabasz(x, labels[:-1])


@pytest.mark.parametrize(
    ("ours", "reference"),
    [(metrics.paired_ttest, scipy.stats.ttest_rel), (metrics.wilcoxon, scipy.stats.wilcoxon)],
)
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_tests_match_scipy(ours, reference, alternative):
    a = RNG.normal(1.0, 1.0, 12)
    b = a - RNG.normal(0.4, 0.5, 12)
    ref = reference(a, b, alternative=alternative)
    _close(ours(a, b, alternative), [ref.statistic, ref.pvalue], rtol=1e-12)
    assert ours(a, a) == (0.0, 1.0)
    with pytest.raises(ValueError, match="equal size"):
        ours(a, b[:-1])
    with pytest.raises(ValueError, match="NaN"):
        ours(a, np.where(np.arange(12) == 3, np.nan, b))
