"""Training the sales CNN: z-scoring, sample weight decay, Adamax, per-region transfer.

* Sample weight decay (section 4.1): ``weight = exp(beta * (ep + k - sp))`` (eq. 18)
  and the weighted squared error (eq. 19, divided by the batch weight sum).
* Transfer learning (section 4.2): pretrain one model on the samples of all
  regions, then continue training one copy per region. The per-region stage is
  one ``jax.vmap``-ed, jitted program over region-stacked parameters and data.
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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dmeta.parallel import batch_sharded, constrain_batch, data_mesh, jit_step
from dmeta.train.loop import check_finite
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


def sample_weights(ends: Array, *, sp: int, horizon: int, beta: float) -> Array:
    """Eq. 18: ``exp(beta * (ep + k - sp))`` for frame end points ``ends`` (any shape)."""
    return jnp.exp(beta * (jnp.asarray(ends, jnp.float32) + horizon - sp))


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


def _fit(graphdef, params, data, key, learning_rate, batch_size, n_steps, mesh=None):
    optimizer = optax.adamax(learning_rate)
    step = make_train_step(graphdef, optimizer, batch_size=batch_size, mesh=mesh)
    state = init_train_state(params, optimizer, key)
    state, losses = jax.lax.scan(lambda s, _: step(s, data), state, None, length=n_steps)
    return state.params, losses


@functools.lru_cache(maxsize=64)
def _program(graphdef, learning_rate, batch_size, n_steps, shard: bool, regions: bool):
    """The jitted ``(params, data, key) -> (params, losses)`` of ``fit`` / ``fit_regions``."""
    mesh = data_mesh() if shard else None
    opts = dict(learning_rate=learning_rate, batch_size=batch_size, n_steps=n_steps)
    if not regions:
        return jit_step(functools.partial(_fit, graphdef, **opts, mesh=mesh), mesh)

    def run(params, data, key):
        keys = jax.random.split(key, data.n.shape[0])
        return jax.vmap(functools.partial(_fit, graphdef, **opts))(params, data, keys)

    out = None if mesh is None else batch_sharded(mesh)
    return jit_step(run, mesh, batch_argnums=(0, 1), out_shardings=out)


def fit(
    graphdef: nnx.GraphDef,
    params: Params,
    data: Samples,
    key: Key,
    *,
    learning_rate: float,
    batch_size: int,
    n_steps: int,
    shard: bool = False,
) -> tuple[Params, Array]:
    """``n_steps`` Adamax steps from ``params`` on ``data`` (a fresh optimizer state).

    One jitted program per (graphdef, hyper-parameters, shard). ``shard=True`` splits
    each minibatch over all visible devices (``make_train_step``), parameters replicated.

    Returns:
      (params, losses f32[n_steps]).
    """
    program = _program(graphdef, learning_rate, batch_size, n_steps, shard, regions=False)
    params, losses = program(params, data, key)
    check_finite(losses, "Sales CNN training")
    return params, losses


def fit_regions(
    graphdef: nnx.GraphDef,
    params: Params,
    data: Samples,
    key: Key,
    *,
    learning_rate: float,
    batch_size: int,
    n_steps: int,
    shard: bool = False,
) -> tuple[Params, Array]:
    """``fit`` for every region at once: one vmapped program.

    Args:
      params: parameters stacked ``[R, ...]`` (per-region inits, or copies of a
        pretrained model for transfer).
      data: ``Samples`` stacked ``[R, N, ...]`` (``n: i32[R]``).
      key: one key, split into one per region.
      shard: split the regions (parameters, data, results) over all visible devices;
        R must divide by the device count. Regions are independent, so the devices
        never communicate.

    Returns:
      (params ``[R, ...]``, losses f32[R, n_steps]).
    """
    program = _program(graphdef, learning_rate, batch_size, n_steps, shard, regions=True)
    params, losses = program(params, data, key)
    check_finite(losses, "Sales CNN per-region training (row = region)")
    return params, losses


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
