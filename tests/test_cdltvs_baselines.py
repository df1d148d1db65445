"""CDLtvS baselines: classical formulas, ZILN likelihood, every baseline end to end (tiny)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from dmeta.ltv import baselines as B
from dmeta.ltv.data import apply_sparsity, make_synthetic, split_customers


@pytest.fixture(scope="module")
def splits():
    d = apply_sparsity(make_synthetic(150, n_periods=6, horizon=2, seed=0), 0.2, seed=0)
    return split_customers(d, seed=0)


def test_arima_forecasts_an_exact_ar1(splits):
    train, val, test = splits
    phi, c = 0.5, 2.0
    x = [1.0]
    for _ in range(test.t_series.shape[1] - 1):
        x.append(c + phi * x[-1])
    series = np.tile(np.asarray(x, np.float32), (test.n, 1))
    t = dataclasses.replace(test, t_series=series, t_observed=np.ones_like(series))
    level, expected = x[-1], 0.0
    for _ in range(t.horizon):
        level = c + phi * level
        expected += level
    np.testing.assert_allclose(B.arima(train, val)(t), expected, rtol=1e-4)


def test_bgnbd_expected_matches_simulation():
    r, alpha, a, b, t = 0.8, 2.0, 2.5, 3.0, 4.0
    rng = np.random.default_rng(0)
    n = 40000
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n)
    clock, count, alive = np.zeros(n), np.zeros(n), np.ones(n, bool)
    for _ in range(200):
        clock = clock + rng.exponential(1 / lam)
        buy = alive & (clock <= t)
        count += buy
        alive = buy & (rng.random(n) >= p)  # dropout after each transaction
    expected = B.bgnbd_expected((r, alpha, a, b), t, 0.0, 0.0, 0.0)
    assert abs(count.mean() - expected) < 0.03 * expected + 0.01


def test_ziln_loss_and_mean_against_scipy():
    logits = jnp.array([[0.3, 0.5, 0.2], [-1.0, 1.0, -0.5]])
    y = jnp.array([2.0, 0.0])
    sig = np.log1p(np.exp(np.asarray(logits[:, 2]))) + 1e-3
    p = 1 / (1 + np.exp(-np.asarray(logits[:, 0])))
    nll0 = -np.log(p[0]) - scipy.stats.lognorm.logpdf(2.0, s=sig[0], scale=np.exp(0.5))
    nll1 = -np.log(1 - p[1])
    got = B.ziln_loss(logits, y, jnp.ones(2))
    np.testing.assert_allclose(got, (nll0 + nll1) / 2, rtol=1e-5)
    mean = p * np.exp(np.asarray(logits[:, 1]) + sig**2 / 2)
    np.testing.assert_allclose(B.ziln_mean(logits), mean, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(B.CLASSICAL))
def test_classical_baselines_predict(splits, name):
    train, val, test = splits
    pred = B.CLASSICAL[name](train, val, seed=0)(test)
    assert pred.shape == (test.n,) and np.isfinite(pred).all() and (pred >= 0).all()


@pytest.mark.parametrize("name", sorted(B.NEURAL))
def test_neural_baselines_predict(splits, name):
    train, val, test = splits
    predict = B.neural_baseline(
        name, train, val, seed=0, hidden=8, max_epochs=1, drop_epoch=0, batch_size=64
    )
    pred = predict(test)
    assert pred.shape == (test.n,) and np.isfinite(pred).all() and (pred >= 0).all()
