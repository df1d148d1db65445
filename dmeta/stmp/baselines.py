"""Baselines for STMP: same-date-type historical average, ARIMA (AR by least squares), XGBoost,
LSTM and first-order MAML.

Each takes a ``dmeta.stmp.data.Prepared`` panel and returns scaled one-step-ahead
predictions f32[N] for the test targets in ``np.nonzero(prep.test)`` order. The AR fit
and the gradient-boosting regressor are the shared ones of ``dmeta.baselines.classical``;
the classical baselines fit on ``prep.known`` (the protocol passes them a panel whose
``known`` is the neural methods' ``train``, ``dmeta.stmp.data.fitted_on_train``, unless
``protocol.classical_targets = "known"``); the LSTM and MAML train on ``prep.train`` like
STMP, early-stopped on ``prep.val`` (``stmp_train.early_stopped``).
"""

from __future__ import annotations

import dataclasses
import functools
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
from dmeta.stmp.model import MLP, N_MONTHS
from dmeta.train.averaging import averaged_params
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Array, Params, TaskBatch


def historical_average(prep: Prepared) -> np.ndarray:
    """Mean scaled target of the same (region, date type) cell before the cutoff.

    Falls back to the date type's mean over all regions, then to 1 (the region mean).
    """
    ys = np.asarray(prep.arrays.ys)
    n_regions, n_types = prep.index.cell_count.shape
    dtype = prep.data.date_type
    sums = np.zeros((n_regions, n_types))
    counts = np.zeros((n_regions, n_types))
    rows, cols = np.nonzero(prep.known)
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
    train_rows, train_cols = np.nonzero(prep.known)
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

    Fitted on the region's targets before the cutoff (lags from the scaled series; unobserved
    days enter as 0 with their observed flag, an explicit regressor), then applied
    one step ahead to the test days. Deterministic (no seed). Least squares instead of
    statsmodels' SARIMAX maximum likelihood: the latter took minutes per store on the
    shared 2-core machine.
    """
    ys, obs = np.asarray(prep.arrays.ys, np.float64), np.asarray(prep.arrays.obs, np.float64)
    preds = np.zeros(ys.shape, np.float32)
    for r in range(ys.shape[0]):
        train, test = np.flatnonzero(prep.known[r]), np.flatnonzero(prep.test[r])
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
        self.mlp = MLP((hidden + n_types + 7 + N_MONTHS + n_attrs, hidden, 1), rngs=rngs)

    def __call__(self, x, dtype, dow, month, attrs):
        """x: f32[N, L, 3], dtype/dow/month: i32[N], attrs: f32[N, A] -> f32[N]."""
        feats = [self.lstm(x), jax.nn.one_hot(dtype, self.n_types), jax.nn.one_hot(dow, 7),
                 jax.nn.one_hot(month, N_MONTHS), attrs]  # fmt: skip
        return self.mlp(jnp.concatenate(feats, -1))[..., 0]


def _lstm_apply(graphdef, window_len: int, params, arrays: Arrays, r: Array, t: Array) -> Array:
    """Scaled predictions f32[N] of targets (r, t) i32[N]."""
    x = jax.vmap(lambda ri, ti: window(arrays, ri, ti, window_len))(r, t)
    model = nnx.merge(graphdef, params)
    return model(x, arrays.type_input[r, t], arrays.dow[t], arrays.month[t], arrays.attrs[r])


_lstm_predict = jax.jit(_lstm_apply, static_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def _lstm_step(graphdef, window_len: int, batch: int, n_steps: int):
    """Jitted ``step(state, arrays, rows, cols)``: MSE on ``batch`` random training targets."""
    opt = stmp_train.adam(0.0, n_steps)  # the learning rate comes from the state

    @jax.jit
    def step(state: TrainState, arrays, rows, cols):  # panel as arguments, not constants
        key, sub = jax.random.split(state.key)
        i = jax.random.randint(sub, (batch,), 0, rows.shape[0])
        r, t = rows[i], cols[i]
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean(
                jnp.square(_lstm_apply(graphdef, window_len, p, arrays, r, t) - arrays.ys[r, t])
            )
        )(state.params)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, key), {"loss": loss}

    return step


def lstm_forecast(
    prep: Prepared,
    *,
    seed: int = 0,
    window_len: int = 28,
    hidden: int = 32,
    n_steps: int = 1500,
    eval_every: int = 0,
    patience: int | None = None,
    batch: int = 256,
    lr: float = 3e-3,
    ema: float = 0.0,
    lr_decays: int = 0,
    lr_factor: float = 0.1,
    min_steps: int = 0,
) -> np.ndarray:
    """A global LSTM trained with MSE on ``batch`` random training targets per Adam step
    (``stmp_train.adam``, iterates averaged with decay ``ema``), early-stopped on
    ``prep.val`` like STMP (``lr_decays`` cuts of the rate by ``lr_factor`` on plateaus
    first, no stop before ``min_steps``)."""
    model = LSTMForecaster(prep.data.n_types, prep.data.attrs.shape[1], hidden,
                           rngs=nnx.Rngs(seed))  # fmt: skip
    graphdef, params = nnx.split(model, nnx.Param)
    rows, cols = (jnp.asarray(a) for a in np.nonzero(prep.train))
    step = _lstm_step(graphdef, window_len, batch, n_steps)
    result = stmp_train.early_stopped(
        lambda s: step(s, prep.arrays, rows, cols),
        init_train_state(params, stmp_train.adam(lr, n_steps, ema), jax.random.key(seed)),
        prep,
        lambda p, r, t: _lstm_predict(graphdef, window_len, p, prep.arrays, r, t),
        n_steps=n_steps,
        eval_every=eval_every,
        patience=patience,
        lr_decays=lr_decays,
        lr_factor=lr_factor,
        min_steps=min_steps,
        desc=f"lstm hidden={hidden} lr={lr:g}",
        settings=dict(window_len=window_len, batch=batch),
    )
    test_rows, test_cols = (jnp.asarray(a) for a in np.nonzero(prep.test))
    params = averaged_params(result.best_state)
    return np.asarray(_lstm_predict(graphdef, window_len, params, prep.arrays, test_rows,
                                    test_cols))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MAMLSizes:
    """MAML's static sizes: tasks per step, queries and support days per task, inner steps."""

    n_tasks: int = 16
    n_query: int = 16
    n_support: int = 16
    inner_steps: int = 1


@functools.lru_cache(maxsize=8)
def _maml_step(graphdef, sizes: MAMLSizes, n_steps: int):
    """Jitted ``step(state, arrays, index, inner_lr, inner_clip)``: one FOMAML update on
    (region, date type) tasks (the learning rates and the clip are traced)."""
    opt = stmp_train.adam(0.0, n_steps)  # the learning rate comes from the state

    @jax.jit
    def step(state, arrays, index, inner_lr, inner_clip):  # panel as arguments, not constants
        task_loss = make_maml_task_loss(_cell_mse(graphdef, arrays), steps=sizes.inner_steps,
                                        step_size=inner_lr, first_order=True,
                                        max_grad_norm=inner_clip)  # fmt: skip
        update = make_meta_train_step(task_loss, opt)
        key, k_batch, k_step = jax.random.split(state.key, 3)
        t = stmp_train.sample_tasks(k_batch, index, jnp.int32(stmp_train.JOINT),
                                    n_tasks=sizes.n_tasks, n_query=sizes.n_query,
                                    n_context=2 * sizes.n_support, n_days=arrays.ys.shape[1],
                                    weighting="task")  # fmt: skip
        n = sizes.n_support
        support = (t.region, t.region_ctx[:, :n], t.region_ctx_mask[:, :n])
        batch = TaskBatch(support=support, query=(t.region, t.days, t.mask), segment=t.region)
        return update(dataclasses.replace(state, key=key), batch, k_step)

    return step


def maml_forecast(
    prep: Prepared,
    *,
    seed: int = 0,
    window_len: int = 28,
    hidden: int = 32,
    n_steps: int = 300,
    eval_every: int = 0,
    patience: int | None = None,
    sizes: MAMLSizes = MAMLSizes(),
    inner_lr: float = 0.05,
    inner_clip: float | None = 1.0,
    lr: float = 3e-3,
    ema: float = 0.0,
    lr_decays: int = 0,
    lr_factor: float = 0.1,
    min_steps: int = 0,
) -> np.ndarray:
    """First-order MAML on the STMP backbone (latents fixed at zero), one task per cell.

    Tasks are (region, date type) cells as for STMP; the support set is up to
    ``sizes.n_support`` training days of the cell (query dates excluded), the inner loop
    ``sizes.inner_steps`` SGD steps on their MSE, each gradient clipped to global norm
    ``inner_clip``. Iterates averaged with decay ``ema``; early-stopped on ``prep.val``
    (supports from ``prep.train``); at test time every cell adapts on days known before the cutoff and predicts its test days.
    """
    graphdef, theta = stmp_model.build(
        window=window_len, period=prep.data.period, n_types=prep.data.n_types,
        n_attrs=prep.data.attrs.shape[1], n_regions=len(prep.data.regions), latent=1,
        hidden=hidden, seed=seed,
    )  # fmt: skip
    step = _maml_step(graphdef, sizes, n_steps)
    inner = dict(inner_lr=jnp.float32(inner_lr),
                 inner_clip=jnp.float32(jnp.inf if inner_clip is None else inner_clip))  # fmt: skip
    key = jax.random.key(seed + 1)

    def predict(meta_params, index, rows, cols):
        layout = _cell_layout(prep, np.asarray(rows), np.asarray(cols))
        return _maml_predict(
            graphdef, meta_params, prep.arrays, index, layout, key,
            n_support=sizes.n_support, steps=sizes.inner_steps, **inner,
        )  # fmt: skip

    result = stmp_train.early_stopped(
        lambda s: step(s, prep.arrays, prep.index, *inner.values()),
        init_train_state(
            init_meta_params(theta), stmp_train.adam(lr, n_steps, ema), jax.random.key(seed)
        ),
        prep,
        lambda p, rows, cols: predict(p, prep.index, rows, cols),
        n_steps=n_steps,
        eval_every=eval_every,
        patience=patience,
        lr_decays=lr_decays,
        lr_factor=lr_factor,
        min_steps=min_steps,
        desc=f"maml hidden={hidden} lr={lr:g} inner_lr={inner_lr:g}",
        settings=dict(window_len=window_len, sizes=sizes, inner_clip=inner_clip),
    )
    return predict(averaged_params(result.best_state), prep.known_index, *np.nonzero(prep.test))


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


@dataclasses.dataclass(frozen=True)
class CellLayout:
    """Targets (rows, cols) grouped by (region, date type) cell.

    Attributes:
      cell_r, cell_d: i32[C] each cell's region and date type.
      days: i32[C, M] each cell's target days, padded.
      inverse, slot: i64[N] each target's cell and place in it.
    """

    cell_r: np.ndarray
    cell_d: np.ndarray
    days: np.ndarray
    inverse: np.ndarray
    slot: np.ndarray


def _cell_layout(prep: Prepared, rows: np.ndarray, cols: np.ndarray) -> CellLayout:
    """The cells of the targets (rows, cols) i[N] and their days."""
    types = prep.data.date_type[rows, cols]
    cells, inverse = np.unique(rows * prep.data.n_types + types, return_inverse=True)
    width = int(np.bincount(inverse).max())
    days = np.zeros((cells.size, width), np.int32)
    slot = np.zeros(rows.size, np.int64)
    for c in range(cells.size):
        members = np.flatnonzero(inverse == c)
        days[c, : members.size] = cols[members]
        slot[members] = np.arange(members.size)
    n_types = prep.data.n_types
    return CellLayout(cells // n_types, cells % n_types, days, inverse, slot)


def _maml_predict(graphdef, meta_params, arrays: Arrays, index, layout: CellLayout, key, *,
                  n_support: int, steps: int, inner_lr, inner_clip) -> np.ndarray:  # fmt: skip
    """Adapts one task per cell of ``layout`` on ``n_support`` of its days in ``index`` and
    predicts its target days: f32[N] in the layout's target order."""
    cell_r, cell_d = jnp.asarray(layout.cell_r), jnp.asarray(layout.cell_d)
    sup_days, sup_mask = stmp_train.region_context_days(key, index, cell_r, cell_d, 2 * n_support)
    support = (cell_r, sup_days[:, :n_support], sup_mask[:, :n_support])
    tasks = TaskBatch(support=support, query=support, segment=cell_r)
    out = _adapted_predictions(graphdef, steps, meta_params, tasks, jnp.asarray(layout.days),
                               arrays, inner_lr, inner_clip)  # fmt: skip
    return np.asarray(out)[layout.inverse, layout.slot]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _adapted_predictions(graphdef, steps, meta_params, tasks, days, arrays, inner_lr, inner_clip):
    """Scaled predictions f32[C, M] of each task's ``days`` after its inner loop."""
    adapted = adapt_tasks(_cell_mse(graphdef, arrays), meta_params, tasks, steps=steps,
                          step_size=inner_lr, max_grad_norm=inner_clip)  # fmt: skip
    return jax.lax.map(
        lambda a: _zero_latent_mean(graphdef, a[0], arrays, a[1], a[2]),
        (adapted, tasks.segment, days), batch_size=8,
    )  # fmt: skip
