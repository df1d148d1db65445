"""Segment demand baselines of RMLDP section 6.1.3, all on the same MPFN samples.

- Classical regressors (Linear Regression, SVR, Random Forest, XGBoost) on the
  flattened local and seasonal windows ``[x_season, x_local]`` (2 * S * F inputs),
  trained on every sample of the source segments plus the target support sets.
- Global neural models trained on the same pooled samples: GRU+MPFN (``MPFN``),
  Dipole+MPFN (attention over each branch's GRU states) and LSTNet, through
  ``dmeta.train.loop.fit`` with early stopping on the meta-validation query MSE.
- Naive: the mean demand of the last T_f steps as the next T_f steps' mean (for T_f = 7
  on daily data, the seasonal naive of the weekly season); no training, the floor a
  trained model must clear.
- Fine-tune: the GRU+MPFN parameters adapted per target segment by SGD on its
  support set (``dmeta.meta.maml.adapt_tasks``; ``dmeta.rmldp.protocol`` tunes the number
  of steps and the step size on the meta-validation segments). MAML and Meta-SGD are the
  unmodulated variants of ``dmeta.rmldp.model.init_rmldp``.

Every neural model is ``apply(params, x_local, x_season) -> f32[...]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta import metrics
from dmeta.baselines.classical import gbm_regressor
from dmeta.meta.maml import adapt_tasks
from dmeta.models.mpfn import DEFAULT_GRU_IMPL, MPFN, masked_mse, split_loss
from dmeta.nn.functional import split_params
from dmeta.nn.rnn import GRU, GRUImpl
from dmeta.train.loop import FitResult, chunking, fit, scan_steps
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Array, Key, Params, Split, TaskBatch

CLASSICAL = ("linear", "svr", "rf", "xgb")


def flatten_split(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Real samples of a (batched) split as a design matrix.

    Args:
      split: ``Split`` with leaves [..., N, S, F] and mask [..., N].

    Returns:
      (X f32[M, 2 * S * F] = [x_season, x_local] flattened, y f32[M]) for mask > 0.
    """
    keep = np.asarray(split.mask).reshape(-1) > 0
    s, f = split.x_local.shape[-2:]
    xs = np.asarray(split.x_season).reshape(-1, s * f)[keep]
    xl = np.asarray(split.x_local).reshape(-1, s * f)[keep]
    return np.concatenate([xs, xl], axis=1), np.asarray(split.y).reshape(-1)[keep]


def make_regressor(name: str, *, seed: int = 0, **params):
    """A scikit-learn style regressor by short name (``CLASSICAL``), single-threaded.

    ``params`` replace the defaults (e.g. the values a tuning grid chose).
    """
    if name == "linear":
        from sklearn.linear_model import LinearRegression

        return LinearRegression(**params)
    if name == "svr":
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVR

        return make_pipeline(StandardScaler(), SVR(**{"C": 1.0, "epsilon": 0.05, **params}))
    if name == "rf":
        from sklearn.ensemble import RandomForestRegressor

        defaults = dict(n_estimators=100, min_samples_leaf=5, max_features=0.3)
        return RandomForestRegressor(**{**defaults, **params}, n_jobs=1, random_state=seed)
    if name == "xgb":
        defaults = dict(n_estimators=200, max_depth=5, learning_rate=0.05, colsample_bytree=0.5)
        return gbm_regressor(seed=seed, **{**defaults, **params})
    raise ValueError(f"unknown regressor {name!r}; use one of {CLASSICAL}")


def fit_classical(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    *,
    max_train: int | None = None,
    seed: int = 0,
    params: dict | None = None,
):
    """Fits regressor ``name`` on pooled samples (single-threaded BLAS).

    Args:
      name: one of ``CLASSICAL``.
      train: (X f32[M, P], y f32[M]) pooled training samples.
      max_train: random subsample of the training rows (SVR is quadratic in M).
      seed: subsampling and model seed.
      params: regressor hyperparameters replacing the defaults.

    Returns:
      The fitted regressor.
    """
    x, y = train
    if max_train is not None and len(y) > max_train:
        rows = np.random.default_rng(seed).choice(len(y), max_train, replace=False)
        x, y = x[rows], y[rows]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # multi-threaded BLAS only spins on a shared CPU
        return make_regressor(name, seed=seed, **(params or {})).fit(x, y)


def predict_classical(model, query: Split) -> np.ndarray:
    """Predictions f32[T, N] of a fitted regressor for every sample of a query ``Split``
    [T, N, S, F] (padding rows predicted too; mask them)."""
    t, n = query.x_local.shape[:2]
    xq = np.concatenate(
        [
            np.asarray(query.x_season).reshape(t * n, -1),
            np.asarray(query.x_local).reshape(t * n, -1),
        ],
        axis=1,
    )
    return model.predict(xq).reshape(t, n).astype(np.float32)


def naive_predict(split: Split, horizon_len: int) -> Array:
    """Naive forecast f32[..., N] of a split's targets in the pool's scaled units: the mean
    scaled demand of the last ``horizon_len`` steps of each local window (targets are the
    next T_f steps' demand over T_f * scale, so this predicts the last T_f steps again)."""
    return jnp.mean(split.x_local[..., -horizon_len:, 0], axis=-1)


class DipoleMPFN(nnx.Module):
    """MPFN whose branches attend over their GRU states (Dipole, Ma et al. 2017).

    Each branch scores its hidden states with general attention against the last
    state, ``a_t = softmax(h_S^T W_a h_t)``, and forms ``h~ = tanh(W_c [c; h_S])``
    with the context ``c = sum_t a_t h_t``; the two ``h~`` feed the linear head.
    (Unidirectional GRUs, as in MPFN.)
    """

    def __init__(self, n_features: int, hidden: int = 128, *, rngs: nnx.Rngs):
        self.grus = nnx.List([GRU(n_features, hidden, rngs=rngs) for _ in range(2)])
        self.att = nnx.List(
            [nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs) for _ in range(2)]
        )
        self.comb = nnx.List([nnx.Linear(2 * hidden, hidden, rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(2 * hidden, 1, rngs=rngs)

    def __call__(self, x_local: Array, x_season: Array) -> Array:
        """Predicted target: f32[..., S, F] x2 -> f32[...]."""
        parts = []
        for gru, att, comb, x in zip(self.grus, self.att, self.comb, (x_season, x_local)):
            h_last, hs = gru(x, return_sequence=True)
            score = jnp.einsum("...h,...sh->...s", att(h_last), hs)
            context = jnp.einsum("...s,...sh->...h", jax.nn.softmax(score, axis=-1), hs)
            parts.append(jnp.tanh(comb(jnp.concatenate([context, h_last], axis=-1))))
        return self.head(jnp.concatenate(parts, axis=-1))[..., 0]


class LSTNet(nnx.Module):
    """LSTNet (Lai et al. 2018) over the sequence ``[x_season; x_local]`` (2S steps).

    Convolution (kernel ``kernel`` over time, ReLU) -> GRU (last state) and a skip-GRU
    over steps ``skip`` apart (last states of each phase) -> linear; plus the
    highway autoregressive term, a linear map of the last ``highway`` demand values.
    """

    def __init__(
        self,
        n_features: int,
        hidden: int = 64,
        *,
        channels: int = 32,
        kernel: int = 3,
        skip: int = 7,
        skip_hidden: int = 16,
        highway: int = 7,
        rngs: nnx.Rngs,
    ):
        self.kernel, self.skip, self.highway = kernel, skip, highway
        self.conv = nnx.Linear(kernel * n_features, channels, rngs=rngs)
        self.gru = GRU(channels, hidden, rngs=rngs)
        self.skip_gru = GRU(channels, skip_hidden, rngs=rngs)
        self.out = nnx.Linear(hidden + skip * skip_hidden, 1, rngs=rngs)
        self.ar = nnx.Linear(highway, 1, rngs=rngs)

    def __call__(self, x_local: Array, x_season: Array) -> Array:
        """Predicted target: f32[..., S, F] x2 -> f32[...]."""
        x = jnp.concatenate([x_season, x_local], axis=-2)  # [..., 2S, F]
        steps = x.shape[-2] - self.kernel + 1
        patches = jnp.concatenate([x[..., i : i + steps, :] for i in range(self.kernel)], -1)
        c = jax.nn.relu(self.conv(patches))  # [..., L, C]
        h = self.gru(c)
        n_phase = steps // self.skip
        tail = c[..., steps - n_phase * self.skip :, :]
        tail = tail.reshape(*tail.shape[:-2], n_phase, self.skip, tail.shape[-1])
        hs = self.skip_gru(jnp.swapaxes(tail, -3, -2))  # [..., skip, Hs]
        hs = hs.reshape(*hs.shape[:-2], -1)
        ar = self.ar(x_local[..., -self.highway :, 0])[..., 0]
        return self.out(jnp.concatenate([h, hs], axis=-1))[..., 0] + ar


def build_neural(
    name: str,
    n_features: int,
    hidden: int,
    *,
    seq_len: int,
    key: Key,
    gru_impl: GRUImpl = DEFAULT_GRU_IMPL,
):
    """``(apply, params)`` of ``"gru_mpfn"`` (its GRUs ``gru_impl``), ``"dipole_mpfn"`` or
    ``"lstnet"``."""
    rngs = nnx.Rngs(key)
    if name == "gru_mpfn":
        return split_params(MPFN(n_features, hidden, gru_impl=gru_impl, rngs=rngs))
    if name == "dipole_mpfn":
        return split_params(DipoleMPFN(n_features, hidden, rngs=rngs))
    if name == "lstnet":
        skip = max(1, min(7, (2 * seq_len - 2) // 2))
        return split_params(
            LSTNet(n_features, hidden, skip=skip, highway=min(7, seq_len), rngs=rngs)
        )
    raise ValueError(f"unknown neural baseline {name!r}")


def pooled_samples(split: Split) -> Split:
    """Real samples of a batched split as one flat ``Split`` [M, ...] (host-side gather)."""
    keep = np.flatnonzero(np.asarray(split.mask).reshape(-1) > 0)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a).reshape(-1, *a.shape[2:])[keep]), split)


def adam(learning_rate: float) -> optax.GradientTransformation:
    """Adam with the learning rate in its state (``optax.inject_hyperparams``; the betas and
    eps stay static, so the numbers equal plain ``optax.adam``'s): one compiled step serves
    every rate of a tuning grid."""
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
        learning_rate=learning_rate
    )


@functools.lru_cache(maxsize=32)
def _train_pooled(apply: Callable, batch_size: int, length: int):
    """Jitted ``length`` Adam steps (one ``lax.scan``) on random minibatches of pooled
    samples: ``(state, samples) -> (state, {"loss"})``. One per model function, batch size
    and chunk: the learning rate is read from the optimizer state."""
    optimizer = adam(0.0)  # its update takes the rate from the state

    def step(state: TrainState, samples: Split):
        key, k_batch = jax.random.split(state.key)
        idx = jax.random.randint(k_batch, (batch_size,), 0, samples.y.shape[0])
        batch = jax.tree.map(lambda a: a[idx], samples)
        loss_fn = lambda p: split_loss(apply, p, batch)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, key), {"loss": loss}

    return jax.jit(scan_steps(step, length))


@functools.partial(jax.jit, static_argnums=0)
def query_mse(apply: Callable, params: Params, tasks: TaskBatch) -> Array:
    """MSE of the unadapted model over the real query samples of ``tasks`` [T, N_q]: f32[]."""
    pred = apply(params, tasks.query.x_local, tasks.query.x_season)
    return metrics.mse(tasks.query.y, pred, tasks.query.mask)


def train_global(
    apply: Callable,
    params: Params,
    samples: Split,
    key: Key,
    *,
    n_steps: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    val: TaskBatch | None = None,
    val_score: Callable[[np.ndarray], float] | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    desc: str = "global model",
) -> FitResult:
    """One global model on pooled samples (source segments + target supports).

    ``dmeta.train.loop.fit`` over jitted chunks of ``gcd(n_steps, eval_every)`` Adam steps;
    each step draws ``batch_size`` samples with a key split from ``state.key``.

    Args:
      apply: ``apply(params, x_local, x_season) -> f32[...]``.
      params: initial parameters.
      samples: flat ``Split`` [M, ...] from ``pooled_samples``.
      key: PRNG key for the minibatches.
      n_steps: Adam steps.
      batch_size: samples per step.
      learning_rate: Adam learning rate (in the optimizer state: one compiled program
        serves every rate).
      val: validation tasks; their query MSE (``query_mse``) is logged as ``val_loss``
        every ``eval_every`` steps and picks the best state.
      val_score: scores the unadapted model's query predictions f32[T, N_q] on ``val``
        as ``val_loss`` instead of their MSE (None: the MSE).
      eval_every: steps between log rows (mean train ``loss``, ``val_loss``).
      patience: stop after this many evaluations without a lower ``val_loss`` (needs
        ``val``); None: run all ``n_steps``.
      desc: the fit's name (checkpoint folder, curve, errors).

    Returns:
      ``FitResult``: ``best_state.params`` of the lowest ``val_loss`` (the last ones
      without ``val``), ``history`` the log rows.

    Raises:
      NonFiniteError: the mean training loss of an interval is NaN or infinite.
    """
    every, length = chunking(n_steps, eval_every)
    chunk = _train_pooled(apply, batch_size, length)

    def eval_fn(state: TrainState):
        if val_score is None:
            return {"val_loss": query_mse(apply, state.params, val)}
        pred = finetune_predict(apply, state.params, val, steps=0, step_size=0.0)
        return {"val_loss": val_score(np.asarray(pred))}

    return fit(
        lambda state: chunk(state, samples),
        init_train_state(params, adam(learning_rate), key),
        n_steps=n_steps,
        eval_fn=None if val is None else eval_fn,
        eval_every=every,
        patience=patience,
        steps_per_call=length,
        desc=desc,
        settings=dict(samples=samples, val=val, batch_size=batch_size),
    )


@functools.partial(jax.jit, static_argnames=("apply", "steps"))
def finetune_predict(
    apply: Callable, params: Params, tasks: TaskBatch, *, steps: int, step_size: float
) -> Array:
    """Fine-tune: ``steps`` SGD steps on each target support set, then predict its query.

    Returns:
      f32[T, N_q] predictions.
    """
    loss = lambda p, s: masked_mse(apply(p, s.x_local, s.x_season), s.y, s.mask)
    adapted = adapt_tasks(loss, {"theta": params}, tasks, steps=steps, step_size=step_size)
    return jax.vmap(apply)(adapted, tasks.query.x_local, tasks.query.x_season)
