"""Deep customer segmentation (C2M Algorithm 1): pretraining and Ours' joint training.

Every deep method (the baselines of ``dmeta.c2m.baselines`` included) trains through
``train_epochs``: ``dmeta.train.loop.fit`` over epochs (``loop.epoch_step``) of a jitted
``(state, batch, consts) -> (state, metrics)`` Adam step on fixed-size batches of users, with
per-epoch targets (outlier weights, DEC's target distribution, DeepCluster's pseudo-labels)
recomputed from the latents of all users before each epoch. The step is compiled once per
loss (the learning rate lives in the optimizer state), and C2M trains a fixed number of
epochs (no validation early stopping), one log row per epoch.

* ``pretrain``: reconstruction only (Algorithm 1, step 1).
* ``joint_segmentation``: reconstruction + alpha * clustering (eq. 6) + beta * preference (eq. 7),
  centroids trained with the autoencoder, outlier weights refreshed per epoch (step 2), labels
  from the nearest centroid (step 3).
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

from dmeta.c2m.autoencoder import BehaviorAutoencoder
from dmeta.c2m.losses import clustering_loss, preference_loss, reconstruction_loss
from dmeta.cluster.kmeans import kmeans, outlier_weights, sq_distances
from dmeta.nn.functional import split_params
from dmeta.parallel import data_mesh, jit_step
from dmeta.train.logs import Row
from dmeta.train.loop import epoch_step, fit
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Params


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """labels: i32[U]; latent: f[U, Z] (the space the labels were found in); weights: f[U]
    (0 for outliers); history: per-epoch rows (``step`` and mean losses) of the training."""

    labels: np.ndarray
    latent: np.ndarray
    weights: np.ndarray
    history: list[Row]


@dataclasses.dataclass(frozen=True, eq=False)
class Autoencoder:
    """The model's pure functions and its parameters: ``apply(params, x, mask) -> (z, logits)``,
    ``encode(params, x, mask) -> z``. Hashed by identity: jitted steps are cached per model, so
    reuse one ``Autoencoder`` (with other ``params``) across seeds and sweeps of one config."""

    apply: Callable
    encode: Callable
    params: Params


def init_autoencoder(
    key: jax.Array,
    *,
    n_behaviors: int,
    n_items: int,
    n_categories: int,
    d_model: int,
    n_heads: int,
    n_layers: int,
    latent_dim: int,
) -> Autoencoder:
    """Builds ``BehaviorAutoencoder`` and splits it once into pure functions."""
    model = BehaviorAutoencoder(
        n_behaviors=n_behaviors,
        n_items=n_items,
        n_categories=n_categories,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        latent_dim=latent_dim,
        rngs=nnx.Rngs(key),
    )
    apply, params = split_params(model)
    encode, _ = split_params(model, "encode")
    return Autoencoder(apply, jax.jit(encode), params)


def encode_all(ae: Autoencoder, params: Params, x, mask, batch_size: int = 256) -> np.ndarray:
    """Latents ``f[U, Z]`` of all users, in batches."""
    enc = jax.jit(ae.encode)
    out = [
        enc(params, x[i : i + batch_size], mask[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]
    return np.asarray(jnp.concatenate(out))


def _optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam with the learning rate in its state (``optax.inject_hyperparams``); the betas and
    eps stay Python constants, as in ``optax.adam`` (injected as f32 arrays, ``1 - b2``
    would be rounded differently and the moments would no longer match bit for bit)."""
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
        learning_rate=learning_rate
    )


@functools.cache
def _train_step(loss_fn: Callable, shard: bool = False) -> Callable:
    """Jitted ``step(state, batch, consts) -> (state, metrics)``, one per loss and ``shard``
    (split the batch over all visible devices, the rest replicated). The learning rate is
    read from ``state.opt_state``, so fits at other rates reuse the compiled step."""
    optimizer = _optimizer(0.0)  # its update takes the rate from the state

    def step(state: TrainState, batch, consts):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, batch, consts)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.key), metrics

    return jit_step(step, data_mesh() if shard else None, batch_argnums=(1,))


def train_epochs(
    params: Params,
    loss_fn: Callable,
    data: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    key: jax.Array,
    desc: str,
    consts: dict | None = None,
    before_epoch: Callable[[TrainState, int], tuple[TrainState, dict[str, np.ndarray]]]
    | None = None,
    shard: bool = False,
) -> tuple[Params, list[Row]]:
    """Minibatch Adam over users with ``dmeta.train.loop.fit``, one log row per epoch.

    Args:
      params: the trained pytree.
      loss_fn: ``loss_fn(params, batch, consts) -> (loss, metrics)``.
      data: per-user arrays (leading axis U).
      key: shuffles the users (split once per epoch, ``loop.epoch_step``).
      desc: names the fit (checkpoint folder, curve, errors); the learning rate, batch
        size and U are appended, so the fits of one cell have distinct names.
      consts: traced hyper-parameters.
      before_epoch: ``(state, epoch) -> (state, targets)`` before each epoch: may reset
        parameters and adds per-user targets (f[U, ...]).
      shard: split each batch over all visible devices (``dmeta.parallel``; the batch
        size, or U if smaller, must divide by the device count).

    Returns:
      The trained params and ``fit``'s rows (``step``, per-epoch mean metrics).

    Raises:
      NonFiniteError: an epoch's mean metric is NaN or infinite.
    """
    n = len(data["x"])

    def prepare(state: TrainState):
        return before_epoch(state, int(state.step) // step.steps)

    step = epoch_step(
        _train_step(loss_fn, shard),
        data,
        batch_size=batch_size,
        consts=lambda epoch: {} if consts is None else consts,
        before_epoch=None if before_epoch is None else prepare,
    )
    result = fit(
        step,
        init_train_state(params, _optimizer(learning_rate), key),
        n_steps=epochs * step.steps,
        steps_per_call=step.steps,
        eval_every=step.steps,
        desc=f"{desc} lr={learning_rate:g} batch={batch_size} users={n}",
    )
    return result.state.params, result.history


@functools.cache
def _pretrain_loss(ae: Autoencoder) -> Callable:
    def loss_fn(params, batch, consts):
        _, logits = ae.apply(params, batch["x"], batch["mask"])
        loss = reconstruction_loss(logits, batch["x"], batch["mask"])
        return loss, {"reconstruction": loss}

    return loss_fn


@functools.cache
def _joint_loss(ae: Autoencoder) -> Callable:
    def loss_fn(state, batch, consts):
        z, logits = ae.apply(state["ae"], batch["x"], batch["mask"])
        rec = reconstruction_loss(logits, batch["x"], batch["mask"])
        clus = clustering_loss(z, state["centroids"], batch["weights"])
        pref = preference_loss(logits, batch["x"], batch["mask"], consts["behavior_weights"])
        loss = rec + consts["alpha"] * clus + consts["beta"] * pref
        return loss, {"loss": loss, "reconstruction": rec, "clustering": clus, "preference": pref}

    return loss_fn


def pretrain(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    epochs,
    batch_size,
    learning_rate,
    key,
    shard: bool = False,
) -> tuple[Params, list[Row]]:
    """Algorithm 1, step 1: reconstruction only, from ``params`` (e.g. ``ae.params``).

    ``shard=True`` splits each batch of users over all visible devices (``train_epochs``).
    """
    return train_epochs(
        params,
        _pretrain_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        desc="c2m pretrain",
        shard=shard,
    )


def joint_segmentation(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    n_segments: int,
    alpha: float,
    beta: float,
    behavior_weights: np.ndarray,
    outlier_z: float | None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    key: jax.Array,
    shard: bool = False,
) -> Segmentation:
    """Algorithm 1, steps 2-3, from pretrained ``params``.

    Args:
      behavior_weights: f[J] eq. 7 weight of each behaviour code.
      outlier_z: outlier threshold (``dmeta.cluster.kmeans.outlier_weights``); None keeps all.
      shard: split each batch of users over all visible devices (``train_epochs``).
    """
    key, k_init = jax.random.split(key)
    init = kmeans(k_init, encode_all(ae, params, x, mask), n_segments, outlier_z=outlier_z)
    state = {"ae": params, "centroids": init.centroids}
    consts = {
        "alpha": jnp.float32(alpha),
        "beta": jnp.float32(beta),
        "behavior_weights": jnp.asarray(behavior_weights, jnp.float32),
    }

    def weights(state: TrainState, epoch: int):
        z = encode_all(ae, state.params["ae"], x, mask)
        w = outlier_weights(z, state.params["centroids"], outlier_z)
        return state, {"weights": np.asarray(w)}

    state, history = train_epochs(
        state,
        _joint_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        desc=f"c2m joint alpha={alpha:g} beta={beta:g} outlier_z={outlier_z}",
        consts=consts,
        before_epoch=weights,
        shard=shard,
    )
    z = encode_all(ae, state["ae"], x, mask)
    labels = np.asarray(jnp.argmin(sq_distances(z, state["centroids"]), axis=1), np.int32)
    w = np.asarray(outlier_weights(z, state["centroids"], outlier_z))
    return Segmentation(labels, z, w, history)
