"""Baselines for STMP: same-date-type historical average, ARIMA (AR by least squares), XGBoost,
LSTM and first-order MAML.

Each takes a ``dmeta.stmp.data.Prepared`` panel and returns scaled one-step-ahead
predictions f32[N] for the test targets in ``np.nonzero(prep.test)`` order. The AR fit
and the gradient-boosting regressor are the shared ones of ``dmeta.baselines.classical``;
the LSTM and MAML train through ``dmeta.train.loop.fit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.baselines.classical import gbm_regressor, lagged, least_squares
from dmeta.meta.maml import adapt_tasks, init_meta_params, make_maml_task_loss
from dmeta.meta.steps import make_meta_train_step
from dmeta.nn.rnn import LSTM
from dmeta.stmp import model as stmp_model
from dmeta.stmp import train as stmp_train
from dmeta.stmp.data import Arrays, Prepared, window
from dmeta.stmp.model import MLP
from dmeta.train import loop
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Array, Params, TaskBatch


def historical_average(prep: Prepared) -> np.ndarray:
    """Mean scaled target of the same (region, date type) cell in training.

    Falls back to the date type's mean over all regions, then to 1 (the region mean).
    """
    ys = np.asarray(prep.arrays.ys)
    n_regions, n_types = prep.index.cell_count.shape
    dtype = prep.data.date_type
    sums = np.zeros((n_regions, n_types))
    counts = np.zeros((n_regions, n_types))
    rows, cols = np.nonzero(prep.train)
    np.add.at(sums, (rows, dtype[rows, cols]), ys[rows, cols])
    np.add.at(counts, (rows, dtype[rows, cols]), 1.0)
    type_mean = np.where(counts.sum(0) > 0, sums.sum(0) / np.maximum(counts.sum(0), 1), 1.0)
    cell_mean = np.where(counts > 0, sums / np.maximum(counts, 1), type_mean[None, :])
    rows, cols = np.nonzero(prep.test)
    return cell_mean[rows, dtype[rows, cols]].astype(np.float32)


def lag_features(prep: Prepared, rows: np.ndarray, cols: np.ndarray, lags: int) -> np.ndarray:
    """Lag + calendar + region features f32[N, 2 * lags + Dt + 7 + 12 + A] of targets (rows, cols)."""
    ys, obs = np.asarray(prep.arrays.ys), np.asarray(prep.arrays.obs)
    back = cols[:, None] - np.arange(1, lags + 1)[None, :]
    dtype = prep.data.date_type[rows, cols]
    dates = prep.data.dates[cols]
    eye = np.eye
    return np.concatenate(
        [
            ys[rows[:, None], back],
            obs[rows[:, None], back],
            eye(prep.data.n_types)[dtype],
            eye(7)[dates.day_of_week.to_numpy()],
            eye(12)[dates.month.to_numpy() - 1],
            prep.data.attrs[rows],
        ],
        axis=1,
    ).astype(np.float32)


def xgboost_forecast(
    prep: Prepared,
    *,
    seed: int = 0,
    lags: int = 28,
    n_estimators: int = 300,
    max_depth: int = 6,
    learning_rate: float = 0.05,
) -> np.ndarray:
    """Gradient-boosted trees (``classical.gbm_regressor``) on lag and calendar features."""
    train_rows, train_cols = np.nonzero(prep.train)
    test_rows, test_cols = np.nonzero(prep.test)
    model = gbm_regressor(
        seed=seed,
        n_jobs=2,
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=learning_rate,
    )
    y = np.asarray(prep.arrays.ys)[train_rows, train_cols]
    model.fit(lag_features(prep, train_rows, train_cols, lags), y)
    return model.predict(lag_features(prep, test_rows, test_cols, lags)).astype(np.float32)


def arima_forecast(prep: Prepared, *, lags: int = 14) -> np.ndarray:
    """Per-region ARIMA(lags, 0, 0) with intercept, fitted by conditional least squares.

    Fitted on the region's training targets (lags from the scaled series; unobserved
    days enter as 0 with their observed flag, an explicit regressor), then applied
    one step ahead to the test days. Deterministic (no seed). Least squares instead of
    statsmodels' SARIMAX maximum likelihood: the latter took minutes per store on the
    shared 2-core machine.
    """
    ys, obs = np.asarray(prep.arrays.ys, np.float64), np.asarray(prep.arrays.obs, np.float64)
    preds = np.zeros(ys.shape, np.float32)
    for r in range(ys.shape[0]):
        train, test = np.flatnonzero(prep.train[r]), np.flatnonzero(prep.test[r])
        if test.size == 0:
            continue

        def design(days, r=r):  # f64[N, 1 + 2 * lags]: intercept, lagged y, lagged flags
            lagged_y, lagged_obs = lagged(ys[r], days, lags), lagged(obs[r], days, lags)
            return np.concatenate([np.ones((days.size, 1)), lagged_y, lagged_obs], axis=1)

        preds[r, test] = design(test) @ least_squares(design(train), ys[r, train])
    rows, cols = np.nonzero(prep.test)
    return preds[rows, cols]


class LSTMForecaster(nnx.Module):
    """LSTM over the input window + date type, calendar and region features -> scaled y."""

    def __init__(self, n_types: int, n_attrs: int, hidden: int, *, rngs: nnx.Rngs):
        self.n_types = n_types
        self.lstm = LSTM(3, hidden, rngs=rngs)
        self.mlp = MLP((hidden + n_types + 7 + n_attrs, hidden, 1), rngs=rngs)

    def __call__(self, x, dtype, dow, attrs):
        """x: f32[N, L, 3], dtype/dow: i32[N], attrs: f32[N, A] -> f32[N]."""
        feats = [self.lstm(x), jax.nn.one_hot(dtype, self.n_types), jax.nn.one_hot(dow, 7), attrs]
        return self.mlp(jnp.concatenate(feats, -1))[..., 0]


def lstm_forecast(
    prep: Prepared,
    *,
    seed: int = 0,
    window_len: int = 28,
    hidden: int = 32,
    n_steps: int = 1500,
    batch: int = 256,
    lr: float = 3e-3,
) -> np.ndarray:
    """A global LSTM trained with MSE on ``batch`` random training targets per Adam step.

    The state's key holds the ``n_steps`` step keys, split from ``key(seed)`` up front.
    """
    model = LSTMForecaster(prep.data.n_types, prep.data.attrs.shape[1], hidden,
                           rngs=nnx.Rngs(seed))  # fmt: skip
    graphdef, params = nnx.split(model, nnx.Param)
    rows, cols = (jnp.asarray(a) for a in np.nonzero(prep.train))

    def apply(params, arrays, r, t):
        x = jax.vmap(lambda ri, ti: window(arrays, ri, ti, window_len))(r, t)
        return nnx.merge(graphdef, params)(x, arrays.dtype[r, t], arrays.dow[t], arrays.attrs[r])

    opt = optax.adam(optax.cosine_decay_schedule(lr, n_steps))

    @jax.jit
    def step(state: TrainState, arrays, rows, cols):  # panel as arguments, not constants
        i = jax.random.randint(state.key[state.step], (batch,), 0, rows.shape[0])
        r, t = rows[i], cols[i]
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean(jnp.square(apply(p, arrays, r, t) - arrays.ys[r, t]))
        )(state.params)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.key), {"loss": loss}

    state = init_train_state(params, opt, jax.random.split(jax.random.key(seed), n_steps))
    state = loop.fit(
        lambda s: step(s, prep.arrays, rows, cols),
        state,
        n_steps=n_steps,
        eval_every=n_steps,
        desc="lstm",
    ).state
    test_rows, test_cols = (jnp.asarray(a) for a in np.nonzero(prep.test))
    return np.asarray(jax.jit(apply)(state.params, prep.arrays, test_rows, test_cols))


def maml_forecast(
    prep: Prepared,
    *,
    seed: int = 0,
    window_len: int = 28,
    hidden: int = 32,
    n_steps: int = 300,
    n_tasks: int = 16,
    n_query: int = 16,
    n_support: int = 16,
    inner_steps: int = 1,
    inner_lr: float = 0.05,
    lr: float = 3e-3,
) -> np.ndarray:
    """First-order MAML on the STMP backbone (latents fixed at zero), one task per cell.

    Tasks are (region, date type) cells as for STMP; the support set is up to
    ``n_support`` training days of the cell (query dates excluded), the inner loop
    ``inner_steps`` SGD steps on their MSE. At test time every cell adapts on its
    training days and predicts its test days.
    """
    graphdef, theta = stmp_model.build(
        window=window_len, period=prep.data.period, n_types=prep.data.n_types,
        n_attrs=prep.data.attrs.shape[1], n_regions=len(prep.data.regions), latent=1,
        hidden=hidden, seed=seed,
    )  # fmt: skip
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    n_days = prep.arrays.ys.shape[1]

    @jax.jit
    def step(state, arrays, index):  # panel as arguments, not constants
        task_loss = make_maml_task_loss(_cell_mse(graphdef, arrays), steps=inner_steps,
                                        step_size=inner_lr, first_order=True)  # fmt: skip
        update = make_meta_train_step(task_loss, opt)
        key, k_batch, k_step = jax.random.split(state.key, 3)
        t = stmp_train.sample_tasks(k_batch, index, jnp.int32(stmp_train.JOINT), n_tasks=n_tasks,
                                    n_query=n_query, n_context=2 * n_support, n_days=n_days)  # fmt: skip
        support = (t.region, t.region_ctx[:, :n_support], t.region_ctx_mask[:, :n_support])
        batch = TaskBatch(support=support, query=(t.region, t.days, t.mask), segment=t.region)
        return update(dataclasses.replace(state, key=key), batch, k_step)

    state = init_train_state(init_meta_params(theta), opt, jax.random.key(seed))
    state = loop.fit(
        lambda s: step(s, prep.arrays, prep.index),
        state,
        n_steps=n_steps,
        eval_every=n_steps,
        desc="maml",
    ).state
    return _maml_test(prep, graphdef, state.params, jax.random.key(seed + 1),
                      n_support=n_support, inner_steps=inner_steps, inner_lr=inner_lr)  # fmt: skip


def _zero_latent_mean(graphdef: nnx.GraphDef, params: Params, arrays: Arrays, r, days) -> Array:
    """STMP's mean f32[M] for region r's days i32[M] with both latents at zero."""
    zeros = jnp.zeros((1, 1))
    model = stmp_model.bind(graphdef, params)
    return stmp_train.predict_cell(model, arrays, r, days, zeros, zeros)[0][0]


def _cell_mse(graphdef: nnx.GraphDef, arrays: Arrays) -> Callable:
    """``loss_fn(params, (r, days, mask))``: masked MSE f32[] of cell r's days i32[M]."""

    def loss_fn(params, split):
        r, days, mask = split
        err = jnp.square(_zero_latent_mean(graphdef, params, arrays, r, days) - arrays.ys[r, days])
        return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return loss_fn


def _maml_test(prep, graphdef, meta_params, key, *, n_support, inner_steps, inner_lr):
    """Adapts one task per (region, date type) cell with test targets on ``n_support`` of its
    training days and predicts its test days: f32[N] in ``np.nonzero(prep.test)`` order."""
    rows, cols = np.nonzero(prep.test)
    types = prep.data.date_type[rows, cols]
    cells, inverse = np.unique(rows * prep.data.n_types + types, return_inverse=True)
    width = int(np.bincount(inverse).max())
    days = np.zeros((cells.size, width), np.int32)  # each cell's test days, padded to [C, M]
    slot = np.zeros(rows.size, np.int64)
    for c in range(cells.size):
        members = np.flatnonzero(inverse == c)
        days[c, : members.size] = cols[members]
        slot[members] = np.arange(members.size)
    cell_r = jnp.asarray(cells // prep.data.n_types)
    cell_d = jnp.asarray(cells % prep.data.n_types)
    sup_days, sup_mask = stmp_train.region_context_days(
        key, prep.index, cell_r, cell_d, 2 * n_support
    )
    support = (cell_r, sup_days[:, :n_support], sup_mask[:, :n_support])
    tasks = TaskBatch(support=support, query=support, segment=cell_r)

    @jax.jit
    def test_predictions(meta_params, tasks, days, arrays):
        adapted = adapt_tasks(_cell_mse(graphdef, arrays), meta_params, tasks,
                              steps=inner_steps, step_size=inner_lr)  # fmt: skip
        return jax.lax.map(
            lambda a: _zero_latent_mean(graphdef, a[0], arrays, a[1], a[2]),
            (adapted, tasks.segment, days), batch_size=8,
        )  # fmt: skip

    out = np.asarray(test_predictions(meta_params, tasks, jnp.asarray(days), prep.arrays))
    return out[inverse, slot]
