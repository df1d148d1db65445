"""CDLtvS baselines: classical formulas, ZILN likelihood, every baseline end to end (tiny)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from dmeta import metrics
from dmeta.ltv import baselines as B
from dmeta.ltv.data import apply_sparsity, make_synthetic, split_customers
from dmeta.ltv.train import model_batch


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


@pytest.fixture(scope="module")
def ptupcdr_case():
    """PTUPCDR fitted at P = 50% on a source-driven synthetic target, and its data."""
    d = apply_sparsity(make_synthetic(300, n_periods=6, horizon=2, seed=0), 0.5, seed=0)
    train, val, test = split_customers(d, seed=0)
    fit = dict(seed=0, hidden=8, meta_dim=8, max_epochs=4, drop_epoch=0, patience=4, lr=1e-2)
    return train, val, test, fit, B.ptupcdr(train, val, batch_size=64, **fit)


def test_ptupcdr_learns_sparse_customers_from_the_source(ptupcdr_case):
    train, _, test, _, predict = ptupcdr_case
    na = test.sparse
    naive = metrics.nmae(test.t_y[na], np.full(na.sum(), np.median(train.t_y)))
    assert metrics.nmae(test.t_y[na], predict(test)[na]) < 0.8 * naive  # fails if not learnt


def test_ptupcdr_prediction_is_the_head_on_the_personal_bridge():
    train = make_synthetic(60, 6, 2, seed=3)
    model = B._build(B.PTUPCDR, B._arch(train, 8), 0, meta_dim=5)
    batch = {k: jnp.asarray(v) for k, v in model_batch(train, 1.0, 1.0).items()}
    e_s, w = model.bridge(batch)
    assert w.shape == (60, 8, 8)
    head = jnp.einsum("nh,nhk->nk", e_s, w) @ model.tgt_head.kernel[...] + model.tgt_head.bias[...]
    np.testing.assert_allclose(model(batch), jnp.maximum(head[:, 0], 0.0), rtol=1e-5, atol=1e-6)


def test_ptupcdr_reads_no_target_input_and_trains_on_c_a_labels_only(ptupcdr_case):
    """The bridged prediction ignores every target-domain input (history, availability,
    portrait, the sparse flag), and C_na training labels never reach the fit."""
    train, val, test, fit, predict = ptupcdr_case
    noise = np.random.default_rng(1)
    other = dataclasses.replace(
        test,
        t_series=noise.gamma(1.0, 5.0, test.t_series.shape).astype(np.float32),
        t_observed=np.ones_like(test.t_observed),
        t_cat=np.zeros_like(test.t_cat),
        t_num=test.t_num + 3.0,
        sparse=~test.sparse,
    )
    np.testing.assert_array_equal(predict(other), predict(test))
    t_y = np.where(train.sparse, 1e3, train.t_y).astype(np.float32)
    refit = B.ptupcdr(dataclasses.replace(train, t_y=t_y), val, batch_size=64, **fit)
    np.testing.assert_array_equal(refit(test), predict(test))
    with pytest.raises(ValueError, match="C_a"):
        B.ptupcdr(train.take(train.sparse), val, **fit)


def test_prob_sparse_attention_keeps_the_top_u_queries():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 30, 2, 4)) for i in range(3))
    scores = np.einsum("nqhd,nkhd->nhqk", q, k) / 2.0
    full = np.einsum("nhqk,nkhd->nqhd", scipy.special.softmax(scores, -1), v)
    np.testing.assert_allclose(B.prob_sparse_attention(q, k, v, factor=10), full, atol=1e-5)
    out = np.asarray(B.prob_sparse_attention(q, k, v, factor=1))  # u = ceil(ln 30) = 4
    measure = scores.max(-1) - scores.mean(-1)  # [N, H, Lq]
    top = np.argsort(-measure, -1)[..., :4]
    for n in range(2):
        for h in range(2):
            active = np.isin(np.arange(30), top[n, h])
            np.testing.assert_allclose(out[n, active, h], full[n, active, h], atol=1e-5)
            lazy = np.broadcast_to(np.asarray(v)[n, :, h].mean(0), out[n, ~active, h].shape)
            np.testing.assert_allclose(out[n, ~active, h], lazy, atol=1e-5)


def test_informer_learns_the_target_series():
    d = make_synthetic(300, n_periods=6, horizon=2, seed=0)
    train, val, test = split_customers(d, seed=0)
    # 10 epochs: from the mean it first overshoots below 0 (MAE on a zero-inflated label) and
    # comes back through the leaky output ReLU
    predict = B.neural_baseline("informer", train, val, seed=0, hidden=8, max_epochs=10,
                                drop_epoch=0, patience=10, batch_size=64, lr=1e-2)  # fmt: skip
    naive = metrics.nmae(test.t_y, np.full(test.n, np.median(train.t_y)))
    assert metrics.nmae(test.t_y, predict(test)) < 0.9 * naive  # fails if not learnt
