"""C2M's segmentation baselines (Table 1), each from the shared pretrained autoencoder.

* ``dec_segmentation``: DEC (Xie et al., 2016): Student-t soft assignments, KL to the sharpened
  target, encoder and centroids trained.
* ``deepcluster_segmentation``: DeepCluster-style: k-means pseudo-labels each epoch, a freshly
  initialized linear head, cross-entropy (+ reconstruction to keep the latent informative).
* ``latent_kmeans_segmentation``: k-means++ on the pretrained latent (AE+KM).
* ``bag_of_categories_segmentation``: k-means on each user's category shares (BoC-KM).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmeta.c2m.losses import reconstruction_loss
from dmeta.c2m.train import Autoencoder, Segmentation, encode_all, train_epochs
from dmeta.cluster.kmeans import kmeans, sq_distances
from dmeta.train.state import TrainState
from dmeta.types import Params


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

    def target(state: TrainState, epoch: int):
        z = encode_all(ae, state.params["ae"], x, mask)
        q = student_t(z, state.params["centroids"])
        return state, {"target": np.asarray(dec_target(q))}

    state, history = train_epochs(
        state,
        _dec_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        desc="dec",
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

    keys = jax.random.split(key, epochs + 2)  # shuffling, each epoch's k-means, the last

    def pseudo(state: TrainState, epoch: int):
        z = encode_all(ae, state.params["ae"], x, mask)
        head = jnp.zeros_like(state.params["head"])  # a new classifier each epoch
        fresh = dataclasses.replace(state, params=dict(state.params, head=head))
        return fresh, {"pseudo": np.asarray(kmeans(keys[1 + epoch], z, n_segments).labels)}

    state, history = train_epochs(
        state,
        _deepcluster_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=keys[0],
        desc="deepcluster",
        before_epoch=pseudo,
    )
    z = encode_all(ae, state["ae"], x, mask)
    res = kmeans(keys[-1], z, n_segments)
    return Segmentation(np.asarray(res.labels), z, np.ones(len(z), np.float32), history)


def latent_kmeans_segmentation(
    ae: Autoencoder, params: Params, x, mask, *, n_segments, key, n_init: int = 4
) -> Segmentation:
    """k-means++ (best of ``n_init`` restarts) on the pretrained latent, no joint training."""
    z = encode_all(ae, params, x, mask)
    res = kmeans(key, z, n_segments, n_init=n_init)
    return Segmentation(np.asarray(res.labels), z, np.ones(len(z), np.float32), [])


def bag_of_categories_segmentation(
    category, mask, n_categories: int, *, n_segments, key, n_init: int = 4
) -> Segmentation:
    """k-means (best of ``n_init`` restarts) on each user's category shares.

    Args:
      category: i32[U, L] category codes; mask: bool[U, L] real events.
    """
    counts = np.zeros((len(category), n_categories), np.float32)
    np.add.at(
        counts,
        (np.repeat(np.arange(len(category)), category.shape[1]), category.ravel()),
        mask.ravel(),
    )
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    res = kmeans(key, shares, n_segments, n_init=n_init)
    return Segmentation(np.asarray(res.labels), shares, np.ones(len(shares), np.float32), [])
