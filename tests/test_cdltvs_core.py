"""CDLtvS pieces: routing masks, losses against hand / numpy references, data, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from dmeta import metrics
from dmeta.data.spec import data_root
from dmeta.datasets import completejourney, transactions
from dmeta.ltv import data as ltv_data
from dmeta.ltv import protocol
from dmeta.ltv.encoders import TCN, DeepFM
from dmeta.ltv.exmn import ExMN, LtvS, route
from dmeta.ltv.losses import (
    expert_classification_loss,
    expert_ordinal_loss,
    infonce_loss,
    level_labels,
    ltv_loss,
    type_alignment_loss,
)
from dmeta.nn.functional import split_params


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_top1_mask_is_exact_repeated_one_hot(k):
    h = 16
    logits = jax.random.normal(jax.random.key(k), (32, k))
    mask = np.asarray(route(logits, a=1, hidden=h))
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert (np.count_nonzero(mask, axis=1) == h // k).all()
    expected = np.repeat(np.eye(k)[np.argmax(logits, -1)], h // k, axis=1)
    np.testing.assert_array_equal(mask, expected)


def test_top2_mask_mixes_two_experts_and_passes_gradient():
    logits = jnp.array([[0.0, 1.0, 3.0, -1.0]])
    mask = route(logits, a=2, hidden=8)
    w = np.asarray(mask)[0, ::2]
    np.testing.assert_allclose(w, [0, 1 / (1 + np.e**2), np.e**2 / (1 + np.e**2), 0], rtol=1e-6)
    grad = jax.grad(lambda lg: (route(lg, a=2, hidden=8) * jnp.arange(8.0)).sum())(logits)
    assert np.abs(np.asarray(grad)).sum() > 0  # a mix of two experts is differentiable
    grad = jax.grad(lambda lg: (route(lg, a=1, hidden=8) * jnp.arange(8.0)).sum())(logits)
    assert not np.asarray(grad).any()  # top-1: the router learns from L_EC / L_EO alone


def test_route_rejects_indivisible_hidden():
    with pytest.raises(ValueError, match="hidden % k"):
        route(jnp.zeros((2, 3)), a=1, hidden=8)


def test_exmn_output_uses_masked_representation():
    apply, params = split_params(ExMN(6, 8, 4, rngs=nnx.Rngs(0)))
    out = apply(params, jax.random.normal(jax.random.key(1), (5, 6)))
    assert out.pred.shape == (5,) and (np.asarray(out.pred) >= 0).all()
    blocks = np.asarray(out.e).reshape(5, 4, 2)
    off = np.ones((5, 4), bool)
    off[np.arange(5), np.asarray(out.expert)] = False
    assert (blocks[off] == 0).all()


def test_encoders_shapes():
    apply, params = split_params(DeepFM((3, 4), 2, 16, rngs=nnx.Rngs(0)))
    assert apply(params, jnp.array([[0, 3], [2, 1]]), jnp.ones((2, 2))).shape == (2, 16)
    apply, params = split_params(TCN(2, 16, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(0), (2, 12, 2))
    y = apply(params, x)
    assert y.shape == (2, 16)
    # the encoding is the last step's output, which sees the last input step
    full = apply(params, x.at[:, -1].set(100.0))
    assert not np.allclose(full, y)


def test_ltvs_without_portraits_ignores_them():
    """``portrait=False`` (the diagnostic LtvS): no DeepFM, ExMN sees the series embedding
    alone, so the prediction does not move with the portrait fields; with it, it does."""
    batch = {
        "t_cat": jnp.array([[0, 1], [2, 3]]),
        "t_num": jnp.ones((2, 2)),
        "t_series": jax.random.uniform(jax.random.key(0), (2, 6)),
        "t_observed": jnp.ones((2, 6)),
    }
    other = dict(batch, t_cat=jnp.array([[1, 0], [3, 2]]), t_num=-jnp.ones((2, 2)))
    for portrait in (True, False):
        apply, params = split_params(
            LtvS((3, 4), 2, hidden=8, k=2, tcn_levels=1, portrait=portrait, rngs=nnx.Rngs(0))
        )
        same = np.allclose(apply(params, batch, "t").e, apply(params, other, "t").e)
        assert same is not portrait and ("portrait" in params) is portrait


def test_level_labels_by_hand():
    v = jnp.array([0.0, 0.0, 5.0, 1.0, 10.0, 3.0])
    np.testing.assert_array_equal(level_labels(v, 3), [0, 0, 2, 1, 2, 1])
    w = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # padding is not ranked
    np.testing.assert_array_equal(level_labels(v, 2, w)[:4], [0, 0, 1, 1])


def test_expert_classification_loss_by_hand():
    logits = jnp.array([[0.0, np.log(2.0), 0.0], [0.0, 0.0, 0.0]])
    levels = jnp.array([1, 2])
    expected = -(np.log(0.5) + np.log(1 / 3)) / (2 * 3)
    np.testing.assert_allclose(expert_classification_loss(logits, levels), expected, rtol=1e-6)


def test_expert_ordinal_loss_by_hand():
    logits = jnp.array([[0.0, np.log(3.0), -np.log(3.0)]])  # sigmoid: 0.5, 0.75, 0.25
    expected = -(np.log(0.5) + np.log(0.75) + np.log(1 - 0.25)) / 3
    np.testing.assert_allclose(expert_ordinal_loss(logits, jnp.array([1])), expected, rtol=1e-6)
    expected0 = -(np.log(0.5) + np.log(0.25) + np.log(0.75)) / 3
    np.testing.assert_allclose(expert_ordinal_loss(logits, jnp.array([0])), expected0, rtol=1e-6)


def test_ltv_loss_is_mae():
    np.testing.assert_allclose(ltv_loss(jnp.array([1.0, 3.0]), jnp.array([2.0, 0.0])), 2.0)


def test_infonce_matches_numpy_reference():
    rng = np.random.default_rng(0)
    m, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    paired = np.array([1, 1, 0, 1, 0, 1], bool)
    mn = m / np.linalg.norm(m, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    terms = []
    for i in np.flatnonzero(paired):
        sims = np.array([mn[i] @ tn[j] for j in range(6)])
        terms.append(-np.log(np.exp(sims[i]) / np.exp(sims).sum()))
    got = infonce_loss(jnp.asarray(m), jnp.asarray(t), jnp.asarray(paired))
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
    w = np.array([1, 1, 1, 1, 1, 0], np.float32)  # padding drops out as anchor and candidate
    terms = [-np.log(np.exp(mn[i] @ tn[i]) / np.exp(mn[i] @ tn[:5].T).sum()) for i in (0, 1, 3)]
    got = infonce_loss(jnp.asarray(m), jnp.asarray(t), jnp.asarray(paired), jnp.asarray(w))
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
    assert float(infonce_loss(jnp.asarray(m), jnp.asarray(t), jnp.zeros(6, bool))) == 0.0


def _unit(theta):
    return np.stack([np.cos(theta), np.sin(theta)], 1)


def test_type_alignment_margin_by_hand():
    e_mo = _unit(np.zeros(3))
    e_to = _unit(np.arccos([0.5, 0.05, 0.8]))
    sparse = jnp.array([True, True, False])
    got = type_alignment_loss(jnp.asarray(e_mo), jnp.asarray(e_to), sparse, margin=0.1)
    np.testing.assert_allclose(got, (0.4 + 0.0) / 2 + (1 - 0.8), rtol=1e-5)
    only_a = type_alignment_loss(jnp.asarray(e_mo), jnp.asarray(e_to), jnp.zeros(3, bool))
    np.testing.assert_allclose(only_a, np.mean(1 - np.array([0.5, 0.05, 0.8])), rtol=1e-5)


def test_synthetic_ground_truth_properties():
    d = ltv_data.make_synthetic(2000, seed=1)
    zero = d.t_y == 0
    assert 0.2 < zero.mean() < 0.5  # zero mass
    pos = d.t_y[~zero]
    assert np.mean(pos) > 2 * np.median(pos)  # long tail
    r = np.corrcoef(np.log1p(d.t_y), np.log1p(d.s_series[:, -3:].sum(1)))[0, 1]
    assert r > 0.5  # target driven by the source


def test_sparsity_removes_target_history_and_nothing_else():
    d = ltv_data.make_synthetic(200, seed=0)
    s = ltv_data.apply_sparsity(d, 0.5, seed=3)
    assert s.sparse.sum() == 100
    assert (s.t_series[s.sparse] == 0).all() and (s.t_observed[s.sparse] == 0).all()
    np.testing.assert_array_equal(s.t_series[~s.sparse], d.t_series[~s.sparse])
    for name in ltv_data.ARRAY_FIELDS:
        if name not in ("t_series", "t_observed", "sparse"):
            np.testing.assert_array_equal(getattr(s, name), getattr(d, name))
    with pytest.raises(ValueError, match="not in"):
        ltv_data.apply_sparsity(d, 1.5, seed=0)


def test_split_is_by_customer_7_2_1():
    d = ltv_data.make_synthetic(100, seed=0)
    parts = ltv_data.split_customers(d, seed=0)
    assert [p.n for p in parts] == [70, 20, 10]
    assert len(np.unique(np.concatenate([p.customer for p in parts]))) == 100
    perm = np.random.default_rng(0).permutation(np.unique(d.customer))  # seed 0: plain split
    for part, expected in zip(parts, np.split(perm, [70, 90]), strict=True):
        np.testing.assert_array_equal(np.unique(part.customer), np.sort(expected))


def test_split_keeps_the_test_customers_across_seeds():
    """Seeds redraw train / validation only: no seed's validation customers (where a shared
    tuning choice is made) are another seed's test customers."""
    d = ltv_data.make_synthetic(100, seed=0)
    splits = [ltv_data.split_customers(d, seed=s) for s in range(4)]
    test = set(splits[0][2].customer)
    for train, val, tst in splits:
        assert set(tst.customer) == test and not test & (set(train.customer) | set(val.customer))
    assert set(splits[0][1].customer) != set(splits[1][1].customer)


def _tiny_transactions():
    day = pd.Timestamp("2020-01-01")
    rows = [
        (1, day + pd.Timedelta(days=d), amt, dom)
        for d, amt, dom in [
            (0, 5.0, "source"),
            (12, 2.0, "target"),
            (25, 3.0, "target"),
            (31, 4.0, "source"),
            (45, 7.0, "target"),
        ]
    ] + [(2, day + pd.Timedelta(days=44), 1.0, "source")]
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "domain"])


def test_from_transactions_windows_and_labels():
    d = ltv_data.from_transactions(
        _tiny_transactions(), period_days=10, n_periods=2, horizon=1, n_anchors=1
    )
    # 5 windows of 10 days (day 45 falls in window 4); anchor 4: history windows 2, 3.
    assert d.n == 1  # customer 2 has no history before the anchor
    np.testing.assert_allclose(d.t_series[0], [3.0, 0.0])
    np.testing.assert_allclose(d.s_series[0], [0.0, 4.0])
    assert d.t_y[0] == 7.0 and d.s_y[0] == 0.0


def test_each_domain_portrait_comes_from_its_own_history_window():
    tx = _tiny_transactions().assign(
        category=["A", "B", "C", "A", "B", "A"], discount=[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    )
    d = ltv_data.from_transactions(tx, period_days=10, n_periods=2, horizon=1, n_anchors=1)
    # history windows 2, 3: target day 25 (3.0, category C, discount 1), source day 31 (4.0, A)
    assert d.s_cat_sizes == d.t_cat_sizes == (1, 4) and d.history_portrait == (1, 3)
    np.testing.assert_array_equal(d.s_cat[0], [0, 1])
    np.testing.assert_array_equal(d.t_cat[0], [0, 3])
    np.testing.assert_allclose(d.s_num[0], [0, 0, np.log(2), np.log(5), 0.0], rtol=1e-6)
    np.testing.assert_allclose(d.t_num[0], [0, 0, np.log(2), np.log(4), 0.25], rtol=1e-6)
    s = ltv_data.apply_sparsity(d, 1.0, seed=0)  # no target history: no target profile
    np.testing.assert_array_equal(s.t_cat[0], [0, 0])
    np.testing.assert_array_equal(s.t_num[0], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.s_num, d.s_num)
    np.testing.assert_array_equal(s.s_cat, d.s_cat)


def test_from_transactions_rejects_bad_domain(tmp_path):
    tx = _tiny_transactions()
    tx.loc[2, "domain"] = "other"
    tx.to_csv(tmp_path / "transactions.csv", index=False)
    with pytest.raises(ValueError, match="domain"):
        protocol.from_transactions(transactions.load(tmp_path))


def test_completejourney_builder():
    path = data_root() / "cj8451_completejourney"
    if not path.exists():
        pytest.skip(f"completejourney data not found at {path}")
    d = protocol.from_completejourney(completejourney.load(path))
    assert d.s_series.shape[1] == 6 and d.n > 5000
    assert 0.05 < (d.t_y == 0).mean() < 0.6
    assert d.t_cat.shape[1] == len(ltv_data.CJ_DEMOGRAPHICS) + 1  # + main department
    main_s, main_t = d.s_cat[:, -1], d.t_cat[:, -1]
    assert len(np.unique(main_s[main_s > 0])) <= len(ltv_data.CJ_SOURCE_DEPARTMENTS)
    assert len(np.unique(main_t[main_t > 0])) > len(ltv_data.CJ_SOURCE_DEPARTMENTS)
    assert not np.isin(main_t[main_t > 0], main_s[main_s > 0]).any()  # disjoint departments
    assert (d.s_num[:, -3:] != d.t_num[:, -3:]).any(1).mean() > 0.9


def test_metrics_by_hand():
    y, p = jnp.array([1.0, 2.0, 3.0, 0.0]), jnp.array([2.0, 2.0, 1.0, 0.0])
    np.testing.assert_allclose(metrics.nmae(y, p), 3.0 / 6.0, rtol=1e-6)
    np.testing.assert_allclose(metrics.nrmse(y, p), np.sqrt(5 / 4) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(metrics.normalized_gini(y, 2 * y), 1.0, rtol=1e-6)
    # reversed order: raw gini of the worst order over the best one
    y3 = jnp.array([1.0, 2.0, 3.0])
    best = 2 * np.mean(np.cumsum([3, 2, 1]) / 6) - 1
    worst = 2 * np.mean(np.cumsum([1, 2, 3]) / 6) - 1
    np.testing.assert_allclose(metrics.normalized_gini(y3, -y3), worst / best, rtol=1e-6)


def test_alignment_gradients_finite_at_zero_vectors():
    e = jnp.zeros((3, 4))
    sparse = jnp.array([True, False, False])
    g = jax.grad(lambda x: type_alignment_loss(x, x, sparse) + infonce_loss(x, x, ~sparse))(e)
    assert np.isfinite(np.asarray(g)).all()
