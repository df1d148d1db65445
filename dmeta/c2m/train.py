"""Deep customer segmentation (C2M Algorithm 1): pretraining and Ours' joint training.

Every deep method (the baselines of ``dmeta.c2m.baselines`` included) trains through one
minibatch loop, ``train_epochs``: a jitted ``(params, opt_state, batch) -> (params,
opt_state, metrics)`` step over fixed-size batches of users, with per-epoch targets
(outlier weights, DEC's target distribution, DeepCluster's pseudo-labels) recomputed from the
latents of all users before each epoch.

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
from dmeta.train.loop import check_finite
from dmeta.types import Params


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """labels: i32[U]; latent: f[U, Z] (the space the labels were found in); weights: f[U]
    (0 for outliers); history: per-epoch mean losses."""

    labels: np.ndarray
    latent: np.ndarray
    weights: np.ndarray
    history: list[dict[str, float]]


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


@functools.cache
def _adam_step(loss_fn: Callable, learning_rate: float, shard: bool = False) -> Callable:
    """Jitted ``step(params, opt_state, batch, consts)``, one per loss, learning rate and
    ``shard`` (split the batch over all visible devices, the rest replicated)."""
    optimizer = optax.adam(learning_rate)

    def step(params, opt_state, batch, consts):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, consts)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jit_step(step, data_mesh() if shard else None, batch_argnums=(2,))


def train_epochs(
    params: Params,
    loss_fn: Callable,
    data: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    key: jax.Array,
    consts: dict | None = None,
    before_epoch: Callable[[Params], tuple[Params, dict[str, np.ndarray]]] | None = None,
    shard: bool = False,
) -> tuple[Params, list[dict[str, float]]]:
    """Minibatch Adam over users. ``loss_fn(params, batch, consts) -> (loss, metrics)``;
    ``data`` holds per-user arrays (leading axis U); ``consts`` are traced hyper-parameters;
    ``before_epoch(params) -> (params, targets)`` may reset parameters and adds per-user
    targets. ``shard=True`` splits each batch over all visible devices (``dmeta.parallel``;
    the batch size, or U if smaller, must divide by the device count)."""
    step = _adam_step(loss_fn, learning_rate, shard)
    opt_state = optax.adam(learning_rate).init(params)
    consts = {} if consts is None else consts

    n = len(data["x"])
    batch_size = min(batch_size, n)
    n_batches = -(-n // batch_size)
    history = []
    for epoch in range(epochs):
        targets = {}
        if before_epoch is not None:
            params, targets = before_epoch(params)
        arrays = dict(data, **targets)
        key, sub = jax.random.split(key)
        order = np.asarray(jax.random.permutation(sub, n))
        order = order[np.arange(n_batches * batch_size) % n].reshape(n_batches, batch_size)
        sums: dict[str, float] = {}
        for idx in order:
            batch = {k: v[idx] for k, v in arrays.items()}
            params, opt_state, metrics = step(params, opt_state, batch, consts)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / n_batches
        check_finite(sums, f"epoch {epoch}")
        history.append(sums)
    return params, history


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
) -> tuple[Params, list]:
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

    def weights(state):
        z = encode_all(ae, state["ae"], x, mask)
        return state, {"weights": np.asarray(outlier_weights(z, state["centroids"], outlier_z))}

    state, history = train_epochs(
        state,
        _joint_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        consts=consts,
        before_epoch=weights,
        shard=shard,
    )
    z = encode_all(ae, state["ae"], x, mask)
    labels = np.asarray(jnp.argmin(sq_distances(z, state["centroids"]), axis=1), np.int32)
    w = np.asarray(outlier_weights(z, state["centroids"], outlier_z))
    return Segmentation(labels, z, w, history)
