"""Deep customer segmentation (C2M Algorithm 1) and the deep-clustering baselines.

All methods share one minibatch loop: a jitted ``(params, opt_state, batch) -> (params,
opt_state, metrics)`` step over fixed-size batches of users, with per-epoch targets
(outlier weights, DEC's target distribution, DeepCluster's pseudo-labels) recomputed from the
latents of all users before each epoch.

* ``pretrain``: reconstruction only (Algorithm 1, step 1).
* ``joint_segmentation``: reconstruction + alpha * clustering (eq. 6) + beta * preference (eq. 7),
  centroids trained with the autoencoder, outlier weights refreshed per epoch (step 2), labels
  from the nearest centroid (step 3).
* ``dec_segmentation``: DEC (Xie et al., 2016): Student-t soft assignments, KL to the sharpened
  target, encoder and centroids trained.
* ``deepcluster_segmentation``: DeepCluster-style: k-means pseudo-labels each epoch, a freshly
  initialized linear head, cross-entropy (+ reconstruction to keep the latent informative).
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


def _epochs(
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
    for _ in range(epochs):
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


@functools.cache
def _dec_loss(ae: Autoencoder) -> Callable:
    def loss_fn(state, batch, consts):
        q = student_t(ae.encode(state["ae"], batch["x"], batch["mask"]), state["centroids"])
        p = batch["target"]
        kl = jnp.sum(p * (jnp.log(jnp.maximum(p, 1e-12)) - jnp.log(q))) / len(p)
        return kl, {"kl": kl}

    return loss_fn


@functools.cache
def _deepcluster_loss(ae: Autoencoder) -> Callable:
    def loss_fn(state, batch, consts):
        z, logits = ae.apply(state["ae"], batch["x"], batch["mask"])
        ce = optax.softmax_cross_entropy_with_integer_labels(
            z @ state["head"], batch["pseudo"]
        ).mean()
        rec = reconstruction_loss(logits, batch["x"], batch["mask"])
        return ce + rec, {"cross_entropy": ce, "reconstruction": rec}

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

    ``shard=True`` splits each batch of users over all visible devices (``_epochs``).
    """
    return _epochs(
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
      shard: split each batch of users over all visible devices (``_epochs``).
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

    state, history = _epochs(
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


def student_t(z: jax.Array, centroids: jax.Array) -> jax.Array:
    """DEC soft assignment ``q_ij ~ (1 + |z_i - mu_j|^2)^-1``: f[B, K]."""
    q = 1.0 / (1.0 + sq_distances(z, centroids))
    return q / q.sum(1, keepdims=True)


def dec_target(q: jax.Array) -> jax.Array:
    """DEC target ``p_ij ~ q_ij^2 / f_j`` with ``f_j = sum_i q_ij``: f[U, K]."""
    p = q**2 / q.sum(0)
    return p / p.sum(1, keepdims=True)


def dec_segmentation(
    ae: Autoencoder, params: Params, x, mask, *, n_segments, epochs, batch_size, learning_rate, key
) -> Segmentation:
    """DEC from pretrained ``params``: KL(P || Q), encoder and centroids trained."""
    key, k_init = jax.random.split(key)
    init = kmeans(k_init, encode_all(ae, params, x, mask), n_segments)
    state = {"ae": params, "centroids": init.centroids}

    def target(state):
        z = encode_all(ae, state["ae"], x, mask)
        return state, {"target": np.asarray(dec_target(student_t(z, state["centroids"])))}

    state, history = _epochs(
        state,
        _dec_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        before_epoch=target,
    )
    z = encode_all(ae, state["ae"], x, mask)
    labels = np.asarray(jnp.argmax(student_t(z, state["centroids"]), axis=1), np.int32)
    return Segmentation(labels, z, np.ones(len(z), np.float32), history)


def deepcluster_segmentation(
    ae: Autoencoder, params: Params, x, mask, *, n_segments, epochs, batch_size, learning_rate, key
) -> Segmentation:
    """DeepCluster-style: per epoch k-means pseudo-labels on the latents and a new linear head
    trained with cross-entropy plus reconstruction; final labels by k-means on the latents."""
    latent_dim = ae.encode(params, x[:1], mask[:1]).shape[-1]
    state = {"ae": params, "head": jnp.zeros((latent_dim, n_segments))}

    keys = iter(jax.random.split(key, epochs + 2))

    def pseudo(state):
        z = encode_all(ae, state["ae"], x, mask)
        fresh = dict(state, head=jnp.zeros_like(state["head"]))  # new classifier each epoch
        return fresh, {"pseudo": np.asarray(kmeans(next(keys), z, n_segments).labels)}

    state, history = _epochs(
        state,
        _deepcluster_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=next(keys),
        before_epoch=pseudo,
    )
    z = encode_all(ae, state["ae"], x, mask)
    res = kmeans(next(keys), z, n_segments)
    return Segmentation(np.asarray(res.labels), z, np.ones(len(z), np.float32), history)


def latent_kmeans_segmentation(
    ae: Autoencoder, params: Params, x, mask, *, n_segments, key
) -> Segmentation:
    """k-means++ on the pretrained latent, no joint training."""
    z = encode_all(ae, params, x, mask)
    res = kmeans(key, z, n_segments)
    return Segmentation(np.asarray(res.labels), z, np.ones(len(z), np.float32), [])


def bag_of_categories_segmentation(
    category, mask, n_categories: int, *, n_segments, key
) -> Segmentation:
    """k-means on each user's category shares (codes ``i32[U, L]``)."""
    counts = np.zeros((len(category), n_categories), np.float32)
    np.add.at(
        counts,
        (np.repeat(np.arange(len(category)), category.shape[1]), category.ravel()),
        mask.ravel(),
    )
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    res = kmeans(key, shares, n_segments)
    return Segmentation(np.asarray(res.labels), shares, np.ones(len(shares), np.float32), [])
