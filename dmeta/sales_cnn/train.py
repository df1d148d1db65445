"""Training the sales CNN: z-scoring, sample weight decay, Adamax, per-region transfer.

* Sample weight decay (section 4.1): ``weight = exp(beta * (ep + k - sp))`` (eq. 18) with
  ``beta`` per day and the exponent in days (``period_days`` per period: 0.02 per day is
  0.14 per week), and the weighted squared error (eq. 19, divided by the batch weight sum).
* Transfer learning (section 4.2): pretrain one model on the samples of all
  regions, then continue training one copy per region. The per-region stage runs
  ``jax.vmap``-ed, jitted programs over region-stacked parameters and data.
* Both train through ``dmeta.train.loop.fit`` in jitted ``lax.scan`` chunks of steps,
  with the learning rate in the optimizer state; given validation samples they log
  and early-stop on the validation loss and return the best state.
* ``shard=True`` (``dmeta.parallel``) runs either on all visible devices: ``fit``
  splits each minibatch, ``fit_regions`` the regions.

Models are NNX modules run functionally: ``graphdef, params = split_model(model)``
once, then ``apply_model(graphdef, params, x, key)``; any model with the call
signature ``model(x: f32[B, ...], key=None) -> f32[B]`` trains here (the CNN and
the DNN baseline).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dmeta.parallel import batch_sharded, constrain_batch, data_mesh, jit_step, replicated
from dmeta.train import loop
from dmeta.train.loop import FitResult, scan_steps
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Array, Key, Params


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Samples:
    """Training samples; the first ``n`` rows are real, the rest padding.

    Leading axes may be added (``[R, ...]`` for region-stacked sets).

    Attributes:
      x: f32[N, ...] z-scored model inputs (frames f32[N, 4, D, T]).
      y: f32[N] z-scored targets.
      w: f32[N] sample weights (eq. 18; ones without weight decay).
      n: i32[] number of real rows.
    """

    x: Array
    y: Array
    w: Array
    n: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scaler:
    """z-score statistics of inputs and targets, from training samples.

    Attributes:
      x_mean, x_std: f32[4, D, 1] per (indicator matrix, indicator).
      y_mean, y_std: f32[] of the target.
    """

    x_mean: Array
    x_std: Array
    y_mean: Array
    y_std: Array

    def x(self, frames: Array) -> Array:
        """frames: f32[..., 4, D, T] -> z-scored."""
        return (frames - self.x_mean) / self.x_std

    def y(self, y: Array) -> Array:
        """Targets -> z-scored."""
        return (y - self.y_mean) / self.y_std

    def inverse_y(self, z: Array) -> Array:
        """z-scored predictions -> sales."""
        return z * self.y_std + self.y_mean


def fit_scaler(frames: Array, y: Array) -> Scaler:
    """Statistics over all leading axes of ``frames: f32[..., 4, D, T]`` and ``y: f32[...]``.

    Constant rows get std 1 so that they map to 0 instead of NaN.
    """
    frames = jnp.asarray(frames)
    flat = frames.reshape(-1, *frames.shape[-3:])
    x_std = flat.std(axis=(0, 3), keepdims=True)[0]
    y_std = jnp.std(y)
    return Scaler(
        x_mean=flat.mean(axis=(0, 3), keepdims=True)[0],
        x_std=jnp.where(x_std > 0, x_std, 1.0),
        y_mean=jnp.mean(y),
        y_std=jnp.where(y_std > 0, y_std, 1.0),
    )


def sample_weights(
    ends: Array, *, sp: int, horizon: int, beta: float, period_days: float = 1.0
) -> Array:
    """Eq. 18: ``exp(beta * days(ep + k - sp))`` for frame end points ``ends`` (any shape).

    ``ends``, ``sp`` and ``horizon`` count periods of ``period_days`` days; ``beta`` is per
    day, as in the paper (its 0.02 on daily data).
    """
    gap = jnp.asarray(ends, jnp.float32) + horizon - sp  # periods, <= 0
    return jnp.exp(beta * period_days * gap)


def weighted_mse(pred: Array, y: Array, w: Array) -> Array:
    """Eq. 19 normalised by the weight sum: ``sum w (y - pred)^2 / sum w``."""
    return jnp.sum(w * jnp.square(y - pred)) / jnp.sum(w)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Params]:
    """Once, outside jit: the hashable graph definition and a pure dict of parameters."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def apply_model(graphdef: nnx.GraphDef, params: Params, x: Array, key: Key | None = None) -> Array:
    """Pure forward pass; ``key`` enables dropout. Returns f32[B]."""
    return nnx.merge(graphdef, params)(x, key)


def stack_params(params: list[Params]) -> Params:
    """Stacks same-structured parameter pytrees along a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
):
    """``step(state, data) -> (state, loss)``: one Adamax step on a random minibatch.

    The minibatch is ``batch_size`` rows drawn uniformly from the ``data.n`` real
    rows of ``data: Samples``; dropout and the draw use ``state.key``.

    With ``mesh`` the drawn minibatch is split over the mesh's devices by a sharding
    constraint (``batch_size`` must divide by the device count) while ``data`` stays
    replicated: the draw is random over all rows, so a sharded pool would need an
    all-to-all gather every step; a replicated one lets each device gather its rows
    locally, and the draw equals the single-device one.
    """

    def step(state: TrainState, data: Samples) -> tuple[TrainState, Array]:
        key, k_batch, k_drop = jax.random.split(state.key, 3)
        idx = jax.random.randint(k_batch, (batch_size,), 0, data.n)
        x, y, w = data.x[idx], data.y[idx], data.w[idx]
        if mesh is not None:
            x, y, w = constrain_batch((x, y, w), mesh)

        def loss_fn(params):
            return weighted_mse(apply_model(graphdef, params, x, k_drop), y, w)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        state = TrainState(
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            step=state.step + 1,
            key=key,
        )
        return state, loss

    return step


def _optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adamax with the learning rate in its state (``optax.inject_hyperparams``)."""
    return optax.inject_hyperparams(optax.adamax)(learning_rate=learning_rate)


def _with_metrics(step):
    """``step(state, data) -> (state, loss)`` as ``-> (state, {"loss": loss})``."""

    def metric_step(state: TrainState, data: Samples):
        state, loss = step(state, data)
        return state, {"loss": loss}

    return metric_step


@functools.lru_cache(maxsize=64)
def _program(graphdef, batch_size: int, length: int, shard: bool, regions: bool):
    """The jitted chunk of ``length`` steps (one ``lax.scan``) of ``fit`` / ``fit_regions``.

    ``fit``: ``(state, data) -> (state, {"loss"})``. ``fit_regions``: ``((params, opt_state,
    keys), step, data) -> (the same three, {"loss"})``, the per-region leaves stacked
    ``[R, ...]`` (split over the devices with ``shard``), the step count shared and the loss
    averaged over regions. The learning rate is read from the optimizer state, so one
    program serves every learning rate.
    """
    mesh = data_mesh() if shard else None
    if not regions:
        step = make_train_step(graphdef, _optimizer(0.0), batch_size=batch_size, mesh=mesh)
        return jit_step(scan_steps(_with_metrics(step), length), mesh)
    step = make_train_step(graphdef, _optimizer(0.0), batch_size=batch_size)
    axes = TrainState(params=0, opt_state=0, step=None, key=0)
    chunk = jax.vmap(scan_steps(_with_metrics(step), length), in_axes=(axes, 0), out_axes=(axes, 0))

    def run(regional, step, data):
        state, metrics = chunk(TrainState(*regional[:2], step, regional[2]), data)
        regional = (state.params, state.opt_state, state.key)
        return regional, state.step, {"loss": jnp.mean(metrics["loss"])}

    out = None if mesh is None else (batch_sharded(mesh), replicated(mesh), replicated(mesh))
    return jit_step(run, mesh, batch_argnums=(0, 2), out_shardings=out)


def _val_mse(graphdef: nnx.GraphDef, params: Params, val: Samples) -> Array:
    real = jnp.arange(val.y.shape[-1]) < val.n
    return weighted_mse(apply_model(graphdef, params, val.x), val.y, val.w * real)


@functools.partial(jax.jit, static_argnames=("graphdef", "regions", "per_region"))
def validation_loss(
    graphdef: nnx.GraphDef,
    params: Params,
    val: Samples,
    *,
    regions: bool = False,
    per_region: bool = False,
) -> Array:
    """Weighted MSE (eq. 19) over the real rows of ``val``, without dropout: f32[].

    With ``regions``: params ``[R, ...]`` and ``val`` ``[R, V, ...]``; the mean over the
    regions of each region's own, or (``per_region``) each region's own, f32[R].
    """
    if regions:
        losses = jax.vmap(functools.partial(_val_mse, graphdef))(params, val)
        return losses if per_region else jnp.mean(losses)
    return _val_mse(graphdef, params, val)


def _train(
    graphdef,
    state,
    data,
    val,
    *,
    regions,
    batch_size,
    n_steps,
    eval_every,
    patience,
    shard,
    desc,
    per_region=False,
    options=None,
) -> FitResult:
    """``loop.fit`` over jitted chunks of ``gcd(n_steps, eval_every)`` steps (``per_region``:
    each region early-stopped on its own, ``loop.fit(rows=R)``); the samples (weights
    included), batch size and model ``options`` join the checkpoint fingerprint."""
    every, length = loop.chunking(n_steps, eval_every)
    program = _program(graphdef, batch_size, length, shard, regions)

    def step_fn(s: TrainState):
        if not regions:
            return program(s, data)
        (params, opt_state, keys), step, metrics = program(
            (s.params, s.opt_state, s.key), s.step, data
        )
        return TrainState(params, opt_state, step, keys), metrics

    # the metrics' structure without tracing the program (whose argument placement needs
    # concrete arrays when the mesh spans several processes)
    step_fn.metric_shapes = lambda s: {"loss": jax.ShapeDtypeStruct((), jnp.float32)}

    def eval_fn(s: TrainState):
        loss = validation_loss(graphdef, s.params, val, regions=regions, per_region=per_region)
        return {"val_loss": loss}

    return loop.fit(
        step_fn,
        state,
        n_steps=n_steps,
        eval_fn=None if val is None else eval_fn,
        eval_every=every,
        patience=patience,
        rows=int(data.n.shape[0]) if per_region else None,
        steps_per_call=length,
        desc=desc,
        # the samples, their weights (weight-decay beta), the batch size and the model's
        # options (a dropout rate) are outside the state
        settings=dict(
            batch_size=batch_size, per_region=per_region, data=data, val=val, options=options
        ),  # fmt: skip
    )


def fit(
    graphdef: nnx.GraphDef,
    params: Params,
    data: Samples,
    key: Key,
    *,
    learning_rate: float,
    batch_size: int,
    n_steps: int,
    val: Samples | None = None,
    eval_every: int = 50,
    patience: int | None = None,
    shard: bool = False,
    desc: str = "Sales CNN",
    options: Mapping | None = None,
) -> FitResult:
    """``n_steps`` Adamax steps from ``params`` on ``data`` (a fresh optimizer state).

    ``dmeta.train.loop.fit`` over jitted chunks of ``gcd(n_steps, eval_every)`` steps (one
    ``lax.scan`` each; one compiled program per graphdef, batch size, chunk and ``shard``,
    whatever the learning rate). ``shard=True`` splits each minibatch over all visible
    devices (``make_train_step``), parameters replicated.

    Args:
      val: validation ``Samples`` [V, ...]; their weighted MSE (``validation_loss``) is
        logged as ``val_loss`` every ``eval_every`` steps and picks the best state.
      eval_every: steps between log rows (mean train ``loss``, ``val_loss``).
      patience: stop after this many evaluations without a lower ``val_loss`` (needs
        ``val``); None: run all ``n_steps``.
      desc: the fit's name (checkpoint folder, curve, errors).
      options: what shapes the model outside ``params`` (its dropout rate, say), for the
        checkpoint fingerprint: two fits that differ only there never restore each other.

    Returns:
      ``FitResult``: ``best_state.params`` are the parameters of the lowest ``val_loss``
      (the last ones without ``val``); ``history`` the log rows.

    Raises:
      NonFiniteError: the mean training loss of an interval is NaN or infinite.
    """
    state = init_train_state(params, _optimizer(learning_rate), key)
    opts = dict(batch_size=batch_size, n_steps=n_steps, eval_every=eval_every, patience=patience)
    opts |= dict(shard=shard, desc=desc, options=options)
    return _train(graphdef, state, data, val, regions=False, **opts)


def fit_regions(
    graphdef: nnx.GraphDef,
    params: Params,
    data: Samples,
    key: Key,
    *,
    learning_rate: float,
    batch_size: int,
    n_steps: int,
    val: Samples | None = None,
    eval_every: int = 50,
    patience: int | None = None,
    per_region: bool = True,
    shard: bool = False,
    desc: str = "Sales CNN regions",
    options: Mapping | None = None,
) -> FitResult:
    """``fit`` for every region at once: each chunk of steps is one vmapped program.

    Args:
      params: parameters stacked ``[R, ...]`` (per-region inits, or copies of a
        pretrained model for transfer).
      data: ``Samples`` stacked ``[R, N, ...]`` (``n: i32[R]``).
      key: one key, split into one per region.
      val: validation ``Samples`` stacked ``[R, V, ...]``; ``val_loss`` (logged) is the
        mean over regions of their validation losses.
      per_region: each region keeps the parameters of its own lowest validation loss and
        stops on its own patience, as if trained alone (the paper builds each region's
        model individually; ``loop.fit(rows=R)``; the run ends when every region has
        stopped). False: one shared step for all regions, chosen on the mean.
      shard: split the regions (parameters, optimizer states, keys, data) over all
        visible devices; R must divide by the device count. Regions are independent, so
        the devices never communicate.
      options: as in ``fit``.

    Returns:
      ``FitResult`` with states stacked ``[R, ...]`` (a shared ``step``); the train
      ``loss`` of a row is the mean over regions.
    """
    optimizer = _optimizer(learning_rate)
    keys = jax.random.split(key, data.n.shape[0])
    state = TrainState(params, jax.vmap(optimizer.init)(params), jnp.zeros((), jnp.int32), keys)
    opts = dict(batch_size=batch_size, n_steps=n_steps, eval_every=eval_every, patience=patience)
    opts |= dict(shard=shard, desc=desc, per_region=per_region, options=options)
    return _train(graphdef, state, data, val, regions=True, **opts)


def broadcast_params(params: Params, n: int) -> Params:
    """``n`` copies of ``params`` stacked on a new leading axis (transfer start point)."""
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (n, *p.shape)), params)


def stack_samples(samples: list[Samples]) -> Samples:
    """Pads region sample sets to the largest and stacks them ``[R, N_max, ...]``."""
    n_max = max(int(s.n) for s in samples)

    def pad(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((n_max - len(a), *a.shape[1:]), a.dtype)])

    return Samples(
        x=jnp.stack([pad(s.x) for s in samples]),
        y=jnp.stack([pad(s.y) for s in samples]),
        w=jnp.stack([pad(s.w) for s in samples]),
        n=jnp.asarray([int(s.n) for s in samples], jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def predict_regions(graphdef: nnx.GraphDef, params: Params, x: Array) -> Array:
    """Per-region models on per-region inputs: params ``[R, ...]``, x f32[R, B, ...] -> f32[R, B]."""
    return jax.vmap(lambda p, xr: apply_model(graphdef, p, xr))(params, x)
