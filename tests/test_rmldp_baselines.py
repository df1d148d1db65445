"""RMLDP baselines: flattened windows, classical regressors, global neural models, fine-tune."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmeta.rmldp.baselines import (
    CLASSICAL,
    _train_pooled,
    build_neural,
    finetune_predict,
    fit_classical,
    flatten_split,
    pooled_samples,
    predict_classical,
    query_mse,
    train_global,
)
from dmeta.types import Split, TaskBatch

T, N, S, F = 3, 6, 8, 2


def make_split(key):
    """Targets are a linear function of the last local demand value, so every model can fit."""
    k1, k2 = jax.random.split(key)
    xl = jax.random.normal(k1, (T, N, S, F))
    xs = jax.random.normal(k2, (T, N, S, F))
    y = 2.0 * xl[..., -1, 0] + 0.5 * xs[..., -1, 0]
    return Split(xl, xs, y, jnp.ones((T, N)).at[:, -1].set(0.0))


def test_flatten_keeps_real_samples_in_season_local_order():
    split = make_split(jax.random.key(0))
    x, y = flatten_split(split)
    assert x.shape == (T * (N - 1), 2 * S * F) and y.shape == (T * (N - 1),)
    np.testing.assert_array_equal(x[0, : S * F], np.asarray(split.x_season[0, 0]).ravel())
    np.testing.assert_array_equal(x[0, S * F :], np.asarray(split.x_local[0, 0]).ravel())


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_regressors_beat_the_mean(name):
    big = [make_split(jax.random.key(i)) for i in range(1, 12)]
    x = np.concatenate([flatten_split(s)[0] for s in big])
    y = np.concatenate([flatten_split(s)[1] for s in big])
    query = make_split(jax.random.key(99))
    pred = predict_classical(fit_classical(name, (x, y), max_train=150), query)
    mask = np.asarray(query.mask) > 0
    err = np.mean((pred - np.asarray(query.y))[mask] ** 2)
    assert pred.shape == (T, N) and err < np.var(np.asarray(query.y)[mask])


@pytest.mark.parametrize("name", ["gru_mpfn", "dipole_mpfn", "lstnet"])
def test_neural_global_models_train(name):
    apply, params = build_neural(name, F, 8, seq_len=S, key=jax.random.key(0))
    split = make_split(jax.random.key(1))
    assert apply(params, split.x_local, split.x_season).shape == (T, N)
    samples = pooled_samples(split)
    assert samples.y.shape == (T * (N - 1),)
    res = train_global(apply, params, samples, jax.random.key(2), n_steps=150, batch_size=8,
                       learning_rate=1e-2, eval_every=25)  # fmt: skip
    losses = [row["loss"] for row in res.history]  # means over 25 steps
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]


def test_global_model_early_stops_on_validation_and_compiles_once():
    apply, params = build_neural("gru_mpfn", F, 8, seq_len=S, key=jax.random.key(0))
    split = make_split(jax.random.key(1))
    samples = pooled_samples(split)
    # validation targets are the negated training ones: the better the fit, the worse
    val = TaskBatch(split, dataclasses.replace(split, y=-split.y), jnp.arange(T))
    opts = dict(batch_size=8, learning_rate=1e-2, eval_every=5)
    key = jax.random.key(2)
    res = train_global(apply, params, samples, key, n_steps=300, val=val, patience=2, **opts)
    vals = [row["val_loss"] for row in res.history]
    assert int(res.state.step) < 300 and res.best_step < int(res.state.step)  # stopped early
    assert res.best_step == res.history[int(np.argmin(vals))]["step"]
    np.testing.assert_allclose(float(query_mse(apply, res.best_state.params, val)), min(vals),
                               rtol=1e-6)  # fmt: skip
    # the best state is the run's state at best_step; another learning rate reuses the program
    chunk, built = _train_pooled(apply, 8, 5), _train_pooled.cache_info()
    replay = train_global(apply, params, samples, key, n_steps=res.best_step, **opts)
    chex.assert_trees_all_equal(res.best_state.params, replay.state.params)
    train_global(apply, params, samples, key, n_steps=10, **dict(opts, learning_rate=1e-3))
    assert _train_pooled.cache_info().misses == built.misses and chunk._cache_size() == 1


def test_global_model_early_stops_on_a_given_validation_score():
    apply, params = build_neural("gru_mpfn", F, 8, seq_len=S, key=jax.random.key(0))
    split = make_split(jax.random.key(1))
    val = TaskBatch(split, split, jnp.arange(T))
    y = np.asarray(split.y)

    def score(pred):  # the median absolute error, not the MSE
        return float(np.median(np.abs(pred - y)))

    res = train_global(apply, params, pooled_samples(split), jax.random.key(2), n_steps=40,
                       batch_size=8, learning_rate=1e-2, eval_every=10, val=val,
                       val_score=score)  # fmt: skip
    vals = [row["val_loss"] for row in res.history]
    pred = finetune_predict(apply, res.best_state.params, val, steps=0, step_size=0.0)
    assert score(np.asarray(pred)) == pytest.approx(min(vals), rel=1e-6)
    assert float(query_mse(apply, res.best_state.params, val)) != pytest.approx(min(vals))


def test_finetune_adapts_per_target():
    apply, params = build_neural("gru_mpfn", F, 8, seq_len=S, key=jax.random.key(0))
    tasks = TaskBatch(make_split(jax.random.key(3)), make_split(jax.random.key(4)), jnp.arange(T))
    base = finetune_predict(apply, params, tasks, steps=0, step_size=0.1)
    tuned = finetune_predict(apply, params, tasks, steps=20, step_size=0.1)
    assert tuned.shape == (T, N)
    mask = tasks.query.mask
    err = lambda p: float(jnp.sum(mask * (p - tasks.query.y) ** 2))
    assert err(tuned) < err(base)
