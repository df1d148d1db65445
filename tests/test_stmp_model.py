"""STMP model and training pieces: set encoder, KL, jump-LSTM, views, tasks, traces."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dmeta.stmp import data as D
from dmeta.stmp import model as M
from dmeta.stmp import train as T
from dmeta.train.state import init_train_state

WINDOW = 14


@pytest.fixture(scope="module")
def prep():
    data = D.make_synthetic(n_regions=4, n_days=240, n_festivals=2, seed=1)
    return D.prepare(data, cutoff=180, window=WINDOW, val_days=20)


def build(prep, **kw):
    d = prep.data
    return M.build(window=WINDOW, period=7, n_types=d.n_types, n_attrs=d.attrs.shape[1],
                   n_regions=len(d.regions), latent=4, hidden=8, **kw)  # fmt: skip


def test_set_encoder_is_permutation_invariant_and_ignores_padding():
    enc = M.SetEncoder(5, 3, 8, 4, rngs=nnx.Rngs(0))
    ctx = jax.random.normal(jax.random.key(1), (6, 5))
    static = jnp.arange(3.0)
    mu, lv = enc(ctx, jnp.ones((1, 6)), static)
    perm = jnp.array([3, 0, 5, 1, 4, 2])
    mu_p, lv_p = enc(ctx[perm], jnp.ones((1, 6)), static)
    np.testing.assert_allclose(mu, mu_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lv, lv_p, rtol=1e-5, atol=1e-6)
    padded = jnp.concatenate([ctx, 100.0 * jnp.ones((3, 5))])
    mu_pad, _ = enc(padded, jnp.concatenate([jnp.ones(6), jnp.zeros(3)])[None], static)
    np.testing.assert_allclose(mu, mu_pad, rtol=1e-5, atol=1e-6)
    mu_other, _ = enc(ctx.at[0].set(5.0), jnp.ones((1, 6)), static)
    assert not np.allclose(mu, mu_other)


def test_kl_matches_closed_form_and_monte_carlo():
    mu = jnp.array([0.3, -1.2, 0.0])
    logvar = jnp.array([0.5, -1.0, 0.0])
    var = np.exp(np.asarray(logvar))
    closed = np.sum(-0.5 * np.log(var) + (var + np.asarray(mu) ** 2) / 2 - 0.5)
    np.testing.assert_allclose(M.gaussian_kl(mu, logvar), closed, rtol=1e-6)
    z = M.sample_latent(jax.random.key(0), mu, logvar, 200_000)
    log_q = jnp.sum(-0.5 * (z - mu) ** 2 / jnp.exp(logvar) - 0.5 * logvar, -1)
    log_p = jnp.sum(-0.5 * z**2, -1)
    np.testing.assert_allclose(jnp.mean(log_q - log_p), closed, rtol=0.02)
    assert float(M.gaussian_kl(jnp.zeros(3), jnp.zeros(3))) == 0.0


def test_jump_lstm_connects_t_to_t_minus_period():
    layer = M.JumpLSTM(1, 4, 7, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (21, 1))
    jac = jax.jacobian(lambda v: layer.states(v).sum(-1))(x)[:, :, 0]  # [L out, L in]
    depends = np.abs(np.asarray(jac)) > 1e-7
    lag = np.arange(21)[:, None] - np.arange(21)[None, :]
    np.testing.assert_array_equal(depends, (lag >= 0) & (lag % 7 == 0))
    assert layer(x).shape == (7 * 4,)


@pytest.mark.parametrize("jump, recent, reads", [(True, 7, 7), (True, WINDOW, WINDOW),
                                                  (False, 7, WINDOW)])  # fmt: skip
def test_plain_lstm_reads_the_last_recent_days(prep, jump, recent, reads):
    """Beside the jump-LSTM the plain LSTM reads the window's last ``recent_days`` days;
    without the jump-LSTM it reads the whole window."""
    model = M.bind(*build(prep, jump=jump, recent_days=recent))
    lstm, seen = model.lstm, []
    model.lstm = lambda x: seen.append(x.shape[-2]) or lstm(x)
    x = jnp.ones((2, WINDOW, M.DAY_FEATURES))
    zeros = jnp.zeros(2, jnp.int32)
    model.features(x, zeros, zeros, zeros, jnp.zeros((2, prep.data.attrs.shape[1])))
    assert seen == [reads]
    with pytest.raises(ValueError, match="recent_days"):
        build(prep, recent_days=WINDOW + 1)


def test_baseline_reads_closed_days_as_zeros_or_as_the_window_mean(prep):
    """A window with its first half closed (unobserved, series 0): the "zero" baseline (the
    initial linear map, the window's average) halves, the "mean" one reads the open days'
    level as if the store had been open throughout."""
    attrs, zeros = jnp.zeros((1, prep.data.attrs.shape[1])), jnp.zeros(1, jnp.int32)
    open_days = jnp.ones((1, WINDOW, M.DAY_FEATURES)).at[..., 2].set(0.0)
    closed = open_days.at[:, : WINDOW // 2, :2].set(0.0)
    for gaps, expected in (("zero", 0.5), ("mean", 1.0)):
        model = M.bind(*build(prep, baseline_gaps=gaps))
        full, _ = model.features(open_days, zeros, zeros, zeros, attrs)
        half, _ = model.features(closed, zeros, zeros, zeros, attrs)
        np.testing.assert_allclose(full, 1.0, rtol=1e-5)
        np.testing.assert_allclose(half, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="baseline_gaps"):
        build(prep, baseline_gaps="median")


def test_head_forms_give_the_mean_from_the_same_head_output(prep):
    """multiplicative: baseline * exp(g); additive: baseline + g; direct: g (the same head
    parameters, so the same g); an unknown form is refused."""
    baseline, fused = jnp.array([0.5, 2.0]), jnp.ones((2, 8))
    z = jnp.zeros((2, 4))
    means = {}
    for head in M.HEADS:
        model = M.bind(*build(prep, head=head))
        means[head], _ = model.generate(baseline, fused, z, z)
    g = means["direct"]
    np.testing.assert_allclose(means["additive"], baseline + g, rtol=1e-6)
    np.testing.assert_allclose(means["multiplicative"], baseline * jnp.exp(g), rtol=1e-6)
    with pytest.raises(ValueError, match="head"):
        build(prep, head="log")


def test_synthetic_uplift_follows_attributes():
    data = D.make_synthetic(n_regions=30, n_days=3 * 365, noise=0.01, seed=0)
    fest_type = data.date_type[0] == 2
    days = np.flatnonzero(fest_type)
    ratio = data.y[:, days] / data.y[:, days - 7]  # vs the same weekday a week before
    uplift = data.truth["uplift"][:, 0]
    assert np.corrcoef(ratio.mean(1), uplift)[0, 1] > 0.95
    coef, *_ = np.linalg.lstsq(np.c_[np.ones(30), data.attrs], np.log(uplift), rcond=None)
    resid = np.log(uplift) - np.c_[np.ones(30), data.attrs] @ coef
    assert np.abs(resid).max() < 1e-5  # log uplift is linear in the attributes


def test_prepare_val_and_one_week(prep):
    assert not prep.train[:, 160:].any() and not prep.test[:, :180].any()
    np.testing.assert_array_equal(np.flatnonzero(prep.val.any(0)), np.arange(160, 180))
    assert not (prep.train & prep.val).any() and prep.val.all(0)[160:180].all()
    np.testing.assert_allclose([prep.data.y[r, prep.known[r]].mean() for r in range(4)], prep.scale)
    calendar = prep.data.is_festival[:, WINDOW:180]
    np.testing.assert_allclose(float(prep.index.festival_share), calendar.mean(), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(prep.known_index.region_count), prep.known.sum(1))
    one = D.one_week_of_festivals(prep.data, prep.train)
    fest_days = np.flatnonzero((one & prep.data.is_festival).any(0))
    assert fest_days.size and fest_days.max() - fest_days.min() < 7
    assert (one & ~prep.data.is_festival).sum() == (prep.train & ~prep.data.is_festival).sum()
    kw = dict(cutoff=180, window=WINDOW, val_days=150)  # day 39, a festival, in val
    assert (D.prepare(prep.data, **kw).val & prep.data.is_festival).any()
    week = D.prepare(prep.data, **kw, one_festival_week=True)
    assert not (week.val & week.data.is_festival).any()
    np.testing.assert_array_equal(week.train, D.one_week_of_festivals(prep.data, week.train))
    assert float(week.index.festival_share) == float(prep.index.festival_share)


def test_unseen_date_types_enter_as_an_all_zero_one_hot_only_when_asked(prep):
    kw = dict(cutoff=180, window=WINDOW, val_days=20, one_festival_week=True)
    week = D.prepare(prep.data, **kw)
    np.testing.assert_array_equal(np.asarray(week.arrays.type_input), prep.data.date_type)
    zero = D.prepare(prep.data, **kw, unseen_types="zero")
    dtype, seen = prep.data.date_type, np.unique(prep.data.date_type[zero.train])
    unseen = ~np.isin(dtype, seen)
    assert unseen.any() and not unseen[zero.train].any()  # the week keeps one festival type
    type_input = np.asarray(zero.arrays.type_input)
    np.testing.assert_array_equal(type_input[unseen], -1)
    np.testing.assert_array_equal(type_input[~unseen], dtype[~unseen])
    assert not np.asarray(jax.nn.one_hot(type_input[unseen], prep.data.n_types)).any()
    with pytest.raises(ValueError, match="unseen_types"):
        D.prepare(prep.data, **kw, unseen_types="drop")


def test_matched_query_weights_give_festivals_the_calendar_share(prep):
    index = dataclasses.replace(prep.index, festival_share=jnp.float32(0.1))
    d = jnp.array([0, 2, 1, 3, 2])  # types 2 and 3 are festivals
    mask = jnp.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], jnp.float32)
    w = np.asarray(T.query_weights(index, d, mask, "matched"))
    fest = np.array([0, 1, 0, 1, 1], bool)[:, None] & (np.asarray(mask) > 0)
    np.testing.assert_allclose(w.sum(), 5.0, rtol=1e-6)
    np.testing.assert_allclose(w[fest].sum() / w.sum(), 0.1, rtol=1e-6)
    assert np.ptp(w[fest]) < 1e-6 and np.ptp(w[~fest & (np.asarray(mask) > 0)]) < 1e-6
    assert (w[np.asarray(mask) == 0] == 0).all()
    regular_only = np.asarray(T.query_weights(index, d * 0, mask, "matched"))
    np.testing.assert_allclose(regular_only.sum(), 5.0, rtol=1e-6)
    per_task = np.asarray(T.query_weights(index, d, mask, "task"))
    np.testing.assert_allclose(per_task.sum(1), [1, 1, 1, 1, 0], rtol=1e-6)


def test_objectives():
    y = jnp.array([1.0, 2.0])
    mean = jnp.array([[1.5, 2.0], [0.5, 1.0]])  # [S=2, Q=2]
    log_sigma = jnp.log(jnp.array([[1.0, 2.0], [0.5, 1.0]]))
    mse = T.query_loss(y, mean, log_sigma, "mse", 0.1)
    np.testing.assert_allclose(mse, [0.25, 0.5], rtol=1e-6)

    def nll(sig):  # -log mean_s N(y; mean_s, sig_s^2)
        dens = np.exp(-0.5 * ((y - mean) / sig) ** 2) / (sig * np.sqrt(2 * np.pi))
        return -np.log(dens.mean(0))

    learned = T.query_loss(y, mean, log_sigma, "learned_sigma", 0.1)
    np.testing.assert_allclose(learned, nll(np.exp(np.asarray(log_sigma))), rtol=1e-5)
    fixed = T.query_loss(y, mean, log_sigma, "fixed_sigma", 0.3)
    np.testing.assert_allclose(fixed, nll(np.full((2, 2), 0.3)), rtol=1e-5)
    with pytest.raises(ValueError, match="objective"):
        T.query_loss(y, mean, log_sigma, "mae", 0.1)


def test_fit_early_stops_on_val_keeps_the_best_and_compiles_once_over_rates(prep):
    graphdef, params = build(prep)
    sizes = dict(n_tasks=2, n_query=2, n_context=4, n_samples=1)
    kw = dict(key=jax.random.key(0), n_steps=40, log_every=5, patience=2, eval_context=4)
    frozen, hist = T.fit(graphdef, params, prep, lr=0.0, **kw, **sizes)
    assert [row["step"] for row in hist] == [5, 10, 15]  # nothing improves after the first
    assert len({row["val_mse"] for row in hist}) == 1
    chex.assert_trees_all_equal(frozen, params)
    _, hist = T.fit(graphdef, params, prep, lr=0.0, min_steps=30, **kw, **sizes)
    assert [row["step"] for row in hist] == [5, 10, 15, 20, 25, 30]  # no stop before 30
    moved, hist = T.fit(graphdef, params, prep, lr=1e-2, **kw, **sizes)
    best = min(range(len(hist)), key=lambda i: hist[i]["val_mse"])
    assert hist[-1]["step"] == 40 or len(hist) - 1 - best == 2  # budget or patience
    step = T._compiled_step(graphdef, 40, tuple(sorted(sizes.items())), False, 1.0)
    assert step._cache_size() == 1  # the learning rate lives in the optimizer state


def test_backbone_learns_at_its_scale_of_the_rate(prep):
    """``adam(backbone_scale=0.1)``: the first update of every BACKBONE leaf is a tenth of
    plain Adam's, every other leaf's the same."""
    _, params = build(prep)
    grads = jax.tree.map(jnp.ones_like, params)
    updates = {}
    for scale in (1.0, 0.1):
        opt = T.adam(1e-2, 100, backbone_scale=scale)
        updates[scale], _ = opt.update(grads, opt.init(params), params)
    for name in params:
        want = 0.1 if name in T.BACKBONE else 1.0
        ratio = jax.tree.map(lambda a, b: a / b, updates[0.1][name], updates[1.0][name])
        for leaf in jax.tree.leaves(ratio):
            np.testing.assert_allclose(leaf, want, rtol=1e-6)
    assert set(T.BACKBONE) <= set(params) and set(params) - set(T.BACKBONE)


def test_sample_tasks_draws_cells_and_masks_query_dates(prep):
    n_days = prep.arrays.ys.shape[1]
    task = T.sample_tasks(jax.random.key(0), prep.index, jnp.int32(T.TEMPORAL), n_tasks=64,
                          n_query=5, n_context=40, n_days=n_days)  # fmt: skip
    r, d, days = map(np.asarray, (task.region, task.date_type, task.days))
    real = np.asarray(task.mask) > 0
    counts = np.asarray(prep.index.cell_count)[r, d]
    np.testing.assert_array_equal(real.sum(1), np.minimum(np.maximum(counts // 2, 1), 5))
    rr = np.broadcast_to(r[:, None], days.shape)[real]
    assert (
        prep.data.date_type[rr, days[real]] == np.broadcast_to(d[:, None], days.shape)[real]
    ).all()
    assert prep.train[rr, days[real]].all()
    assert (d >= 2).mean() > 0.2  # the temporal view draws date types uniformly
    ctx_days = np.asarray(task.type_ctx) % n_days
    clash = (ctx_days[:, :, None] == days[:, None, :]).any(-1)
    np.testing.assert_array_equal(np.asarray(task.type_ctx_mask) == 0, clash)
    rctx = np.asarray(task.region_ctx)
    assert prep.train[r[:, None], rctx].all()


def test_past_context_holds_only_days_before_the_task_s_queries(prep):
    """context_days="past": each task's queries are its cell's days from a random cut on,
    and every unmasked context day (own cell, any day of the region, the date type's pairs)
    lies before the first of them; with "any" later days of the cell are context too."""
    n_days = prep.arrays.ys.shape[1]
    kw = dict(n_tasks=64, n_query=5, n_context=40, n_days=n_days)
    for view in (T.SPATIAL, T.TEMPORAL):
        task = T.sample_tasks(jax.random.key(1), prep.index, jnp.int32(view), **kw,
                              context_days="past")  # fmt: skip
        days, real = np.asarray(task.days), np.asarray(task.mask) > 0
        first = np.where(real, days, n_days).min(1)
        r, d = np.asarray(task.region), np.asarray(task.date_type)
        assert prep.train[np.broadcast_to(r[:, None], days.shape)[real], days[real]].all()
        region = np.where(np.asarray(task.region_ctx_mask) > 0, np.asarray(task.region_ctx), -1)
        pairs = np.asarray(task.type_ctx) % n_days
        typed = np.where(np.asarray(task.type_ctx_mask) > 0, pairs, -1)
        assert (region < first[:, None]).all() and (typed < first[:, None]).all()
        assert (region >= 0).sum() > 0 and (typed >= 0).sum() > 0  # context is left
        cells = np.asarray(prep.index.cell_days)[r, d]
        counts = np.asarray(prep.index.cell_count)[r, d]
        for row in range(len(r)):  # queries: a suffix of the cell's days
            own = cells[row, : counts[row]]
            assert set(days[row][real[row]]) <= set(own[own >= first[row]])
    anyway = T.sample_tasks(jax.random.key(1), prep.index, jnp.int32(T.TEMPORAL), **kw)
    days, real = np.asarray(anyway.days), np.asarray(anyway.mask) > 0
    first = np.where(real, days, n_days).min(1)
    region = np.where(np.asarray(anyway.region_ctx_mask) > 0, np.asarray(anyway.region_ctx), -1)
    assert (region > first[:, None]).any()  # the default draws later days as context
    with pytest.raises(ValueError, match="context_days"):
        T.sample_tasks(jax.random.key(1), prep.index, jnp.int32(0), **kw, context_days="future")


def test_type_dropout_hides_festival_types_as_at_test_time(prep):
    n_days = prep.arrays.ys.shape[1]
    kw = dict(n_tasks=64, n_query=5, n_context=40, n_days=n_days)
    key, view = jax.random.key(0), jnp.int32(T.TEMPORAL)
    base = T.sample_tasks(key, prep.index, view, **kw)
    assert not np.asarray(base.type_hidden).any()
    hidden = T.sample_tasks(key, prep.index, view, **kw, type_dropout=1.0)
    fest = np.asarray(prep.index.festival_type)[np.asarray(base.date_type)] > 0
    assert fest.any() and (~fest).any()
    np.testing.assert_array_equal(np.asarray(hidden.type_hidden), fest)  # festivals only
    np.testing.assert_array_equal(np.asarray(hidden.region), np.asarray(base.region))
    type_mask, region_mask = np.asarray(hidden.type_ctx_mask), np.asarray(hidden.region_ctx_mask)
    assert not type_mask[fest].any() and not region_mask[fest, :20].any()
    np.testing.assert_array_equal(
        region_mask[fest, 20:], np.asarray(base.region_ctx_mask)[fest, 20:]
    )
    np.testing.assert_array_equal(type_mask[~fest], np.asarray(base.type_ctx_mask)[~fest])
    # a hidden type's one-hot input is off: the prediction is the one of an unseen type
    graphdef, params = build(prep)
    model, r, days = M.bind(graphdef, params), jnp.int32(0), jnp.arange(30, 34)
    z = jnp.zeros((1, 4))
    off = T.predict_cell(model, prep.arrays, r, days, z, z, jnp.bool_(True))
    unseen = dataclasses.replace(prep.arrays, type_input=jnp.full_like(prep.arrays.type_input, -1))
    same = T.predict_cell(model, unseen, r, days, z, z)
    np.testing.assert_array_equal(np.asarray(off[0]), np.asarray(same[0]))
    on = T.predict_cell(model, prep.arrays, r, days, z, z)
    assert not np.array_equal(np.asarray(off[0]), np.asarray(on[0]))


def test_views_alternate_and_route_gradients(prep):
    views = [int(T.view_at(jnp.int32(s), mode="alternate", switch_every=3)) for s in range(8)]
    assert views == [0, 0, 0, 1, 1, 1, 0, 0]
    assert int(T.view_at(jnp.int32(5), mode="joint", switch_every=3)) == T.JOINT
    graphdef, params = build(prep)
    loss = T.make_task_loss(graphdef, prep.arrays, n_samples=2, beta=1.0)
    n_days = prep.arrays.ys.shape[1]

    @jax.jit
    def norms(view):
        task = T.sample_tasks(jax.random.key(1), prep.index, view, n_tasks=1, n_query=4,
                              n_context=8, n_days=n_days)  # fmt: skip
        task = jax.tree.map(lambda a: a[0], task)
        g = jax.grad(lambda p: loss(p, task, jax.random.key(2))[0])(params)
        return [optax.tree.norm(g[k]) for k in ("region_encoder", "type_encoder")]

    def grad_norms(view):
        return [float(n) for n in norms(jnp.int32(view))]

    reg, typ = grad_norms(T.SPATIAL)
    assert reg > 0 and typ == 0
    reg, typ = grad_norms(T.TEMPORAL)
    assert reg == 0 and typ > 0
    assert min(grad_norms(T.JOINT)) > 0


def test_train_step_traces_once_and_alternates_views(prep):
    graphdef, params = build(prep)
    opt = optax.adam(3e-3)
    step = T.make_train_step(graphdef, opt, switch_every=2, n_tasks=4, n_query=4,
                             n_context=8, n_samples=2)  # fmt: skip
    step = jax.jit(chex.assert_max_traces(step, n=1))
    state = init_train_state(params, opt, jax.random.key(0))
    views = []
    for _ in range(5):
        state, metrics = step(state, prep.arrays, prep.index)
        views.append(int(metrics["view"]))
    assert views == [0, 0, 1, 1, 0] and int(state.step) == 5
    assert np.isfinite(float(metrics["loss"]))


def test_new_region_adapts_by_forward_pass(prep):
    graphdef, params = build(prep)
    z_r, z_d = T.posteriors(graphdef, params, prep.arrays, prep.index, key=jax.random.key(0),
                            n_context=16)  # fmt: skip
    assert z_r.shape == (4, prep.data.n_types, 4) and z_d.shape == (prep.data.n_types, 4)
    # a "new" region 0: different history and attributes, same parameters
    arrays = prep.arrays
    new = dataclasses.replace(arrays, ys=arrays.ys.at[0].mul(3.0),
                              attrs=arrays.attrs.at[0].set(-arrays.attrs[0]))  # fmt: skip
    z_new, z_d_new = T.posteriors(graphdef, params, new, prep.index, key=jax.random.key(0),
                                  n_context=16)  # fmt: skip
    assert not np.allclose(z_new[0], z_r[0])
    np.testing.assert_allclose(z_new[1:], z_r[1:], rtol=1e-5)
    pred = T.predict(graphdef, params, prep, key=jax.random.key(0), n_context=16)
    assert pred.shape == (prep.test.sum(),) and np.isfinite(pred).all()


def test_forecasts_at_the_posterior_means_or_averaged_over_latent_draws(prep):
    """``draws = 0`` forecasts at both posterior means (the head at (E z_r, E z_d)); with
    draws the forecast is the level-space mean over joint draws, which moves it for an
    amortized model (nonlinear head) and leaves a deterministic one (no posterior spread)
    where it was."""
    graphdef, params = build(prep, context_path=True)
    key = jax.random.key(0)
    at_means = T.predict(graphdef, params, prep, key=key, n_context=16)
    z_r, z_d, s_r, s_d = T.posteriors(graphdef, params, prep.arrays, prep.known_index, key=key,
                                      n_context=16, scales=True)  # fmt: skip
    assert (s_r[..., :4] > 0).all() and (s_r[..., 4:] == 0).all() and (s_d[:, 4:] == 0).all()
    model = M.bind(graphdef, params)
    r, t = (int(a[0]) for a in np.nonzero(prep.test))
    d = prep.arrays.dtype[r, t]
    mean, _ = T.predict_cell(model, prep.arrays, r, jnp.array([t]), z_r[r, d][None], z_d[d][None])
    np.testing.assert_allclose(at_means[0], mean[0, 0], rtol=1e-5)
    drawn = T.predict(graphdef, params, prep, key=key, n_context=16, draws=64)
    assert drawn.shape == at_means.shape and np.isfinite(drawn).all()
    assert np.abs(drawn - at_means).max() > 1e-4  # the head is nonlinear in the latents
    graphdef, params = build(prep, amortized=False, jump=False)
    np.testing.assert_allclose(
        T.predict(graphdef, params, prep, key=key, n_context=16, draws=8),
        T.predict(graphdef, params, prep, key=key, n_context=16),
        rtol=1e-5,
    )


def test_deterministic_ablation_has_no_kl(prep):
    graphdef, params = build(prep, amortized=False, jump=False)
    assert "region_table" in params
    loss = T.make_task_loss(graphdef, prep.arrays, n_samples=2, beta=1.0)
    task = T.sample_tasks(jax.random.key(1), prep.index, jnp.int32(T.JOINT), n_tasks=1,
                          n_query=4, n_context=8, n_days=prep.arrays.ys.shape[1])  # fmt: skip
    _, aux = loss(params, jax.tree.map(lambda a: a[0], task), jax.random.key(0))
    assert float(aux["kl"]) == 0.0


def test_context_path_carries_the_pooled_context_to_the_head(prep):
    """With ``context_path`` each side gives the head [posterior mean, pooled context]; the
    pooled part is the encoder's masked mean embedding, and the deterministic ablation has
    no such path (it has no amortization network)."""
    graphdef, params = build(prep, context_path=True)
    z_r, z_d = T.posteriors(graphdef, params, prep.arrays, prep.index, key=jax.random.key(0),
                            n_context=16)  # fmt: skip
    assert z_r.shape == (4, prep.data.n_types, 4 + 8) and z_d.shape == (prep.data.n_types, 4 + 8)
    model = M.bind(graphdef, params)
    ctx = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2 + prep.data.n_types)), jnp.float32)
    mask = jnp.array([1, 1, 1, 0, 0, 0], jnp.float32)
    attrs, r, d = prep.arrays.attrs[0], jnp.int32(0), jnp.int32(2)
    pooled = model.region_side(ctx, mask, attrs, r, d)[2]
    np.testing.assert_allclose(pooled, model.region_encoder.phi(ctx[:3]).mean(0), rtol=1e-5)
    loss = T.make_task_loss(graphdef, prep.arrays, n_samples=2, beta=1e-2)
    task = T.sample_tasks(jax.random.key(1), prep.index, jnp.int32(T.SPATIAL), n_tasks=1,
                          n_query=4, n_context=8, n_days=prep.arrays.ys.shape[1])  # fmt: skip
    grads = jax.grad(lambda p: loss(p, jax.tree.map(lambda a: a[0], task), jax.random.key(0))[0])(
        params
    )
    # the spatial view trains the region side, its pooled path included; not the type side
    assert float(jnp.abs(grads["region_encoder"]["phi"]["layers"][0]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["type_encoder"]["phi"]["layers"][0]["kernel"]).sum()) == 0
    plain = M.bind(*build(prep, context_path=True, amortized=False))
    assert plain.region_side(ctx, mask, attrs, r, d)[2].shape == (0,)


def test_split_pool_keeps_the_cells_own_days_apart(prep):
    """With ``split_pool`` the region side pools the points of the task's date type and the
    other points separately: its pooled context is [mean over own-type points, mean over the
    rest], and the posteriors carry both to the head."""
    graphdef, params = build(prep, context_path=True, split_pool=True)
    model = M.bind(graphdef, params)
    n_types = prep.data.n_types
    d = 2  # a festival type
    types = jnp.array([d, d, 0, 0, 1, 0, 0, 0])
    values = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
    ctx = jnp.concatenate([values, jax.nn.one_hot(types, n_types)], axis=1)
    mask = jnp.ones(8).at[-1].set(0.0)
    attrs, r = prep.arrays.attrs[0], jnp.int32(0)
    _, _, pooled = model.region_side(ctx, mask, attrs, r, jnp.int32(d))
    phi = model.region_encoder.phi
    np.testing.assert_allclose(pooled[:8], phi(ctx[:2]).mean(0), rtol=1e-5)
    np.testing.assert_allclose(pooled[8:], phi(ctx[2:7]).mean(0), rtol=1e-5)
    z_r, _ = T.posteriors(graphdef, params, prep.arrays, prep.index, key=jax.random.key(0),
                          n_context=16)  # fmt: skip
    assert z_r.shape == (4, n_types, 4 + 2 * 8)  # the learns test trains this model
