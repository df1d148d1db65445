"""C2M's segmentation baselines (Table 1), each from the shared pretrained autoencoder.

* ``dec_segmentation``: DEC (Xie et al., 2016): Student-t soft assignments (``alpha`` degrees
  of freedom, 1 in the DEC paper), KL to the sharpened target, encoder and centroids trained.
* ``deepcluster_segmentation``: DeepCluster-style: k-means pseudo-labels each epoch, a freshly
  initialized linear head, cross-entropy (+ reconstruction to keep the latent informative).
* ``latent_kmeans_segmentation``: k-means++ on the pretrained latent (AE+KM).
* ``bag_of_categories_segmentation``: k-means on each user's category shares (BoC-KM).
* MST (market segmentation trees) is ``dmeta.c2m.mst``.

Each returns a ``dmeta.c2m.train.Segmentation`` with its centroids and its space's ``embed``.
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
from dmeta.c2m.train import Autoencoder, Segmentation, encode_all, latent_space, train_epochs
from dmeta.cluster.kmeans import kmeans, sq_distances
from dmeta.train.state import TrainState
from dmeta.types import Params


@functools.cache
def _dec_loss(ae: Autoencoder) -> Callable:
    def loss_fn(state, batch, consts, key):
        z = ae.train_encode(state["ae"], batch["x"], batch["mask"], key)
        q = student_t(z, state["centroids"], consts["alpha"])
        p = batch["target"]
        kl = jnp.sum(p * (jnp.log(jnp.maximum(p, 1e-12)) - jnp.log(q))) / len(p)
        return kl, {"kl": kl}

    return loss_fn


@functools.cache
def _deepcluster_loss(ae: Autoencoder) -> Callable:
    def loss_fn(state, batch, consts, key):
        z, logits = ae.train_apply(state["ae"], batch["x"], batch["mask"], key)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            z @ state["head"], batch["pseudo"]
        ).mean()
        rec = reconstruction_loss(logits, batch["x"], batch["mask"])
        return ce + rec, {"cross_entropy": ce, "reconstruction": rec}

    return loss_fn


def student_t(z: jax.Array, centroids: jax.Array, alpha=1.0) -> jax.Array:
    """DEC soft assignment ``q_ij ~ (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2)``: f[B, K]."""
    q = (1.0 + sq_distances(z, centroids) / alpha) ** (-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdims=True)


def dec_target(q: jax.Array) -> jax.Array:
    """DEC target ``p_ij ~ q_ij^2 / f_j`` with ``f_j = sum_i q_ij``: f[U, K]."""
    p = q**2 / q.sum(0)
    return p / p.sum(1, keepdims=True)


def dec_segmentation(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    n_segments,
    epochs,
    batch_size,
    learning_rate,
    key,
    alpha: float = 1.0,
    decay_end: float | None = None,
) -> Segmentation:
    """DEC from pretrained ``params``: KL(P || Q) with ``alpha`` degrees of freedom, encoder
    and centroids trained (``decay_end``: as in ``train_epochs``)."""
    key, k_init = jax.random.split(key)
    init = kmeans(k_init, encode_all(ae, params, x, mask), n_segments)
    state = {"ae": params, "centroids": init.centroids}

    def target(state: TrainState, epoch: int):
        z = encode_all(ae, state.params["ae"], x, mask)
        q = student_t(z, state.params["centroids"], alpha)
        return state, {"target": np.asarray(dec_target(q))}

    state, history = train_epochs(
        state,
        _dec_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        desc=f"dec alpha={alpha:g}",
        decay_end=decay_end,
        consts={"alpha": jnp.float32(alpha)},
        before_epoch=target,
    )
    z, embed = latent_space(ae, state["ae"], x, mask)
    # q decreases with the distance, so its argmax is the nearest centroid.
    labels = np.asarray(jnp.argmax(student_t(z, state["centroids"], alpha), axis=1), np.int32)
    centroids = np.asarray(state["centroids"])
    return Segmentation(labels, z, np.ones(len(z), np.float32), history, centroids, embed)


def deepcluster_segmentation(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    n_segments,
    epochs,
    batch_size,
    learning_rate,
    key,
    decay_end: float | None = None,
) -> Segmentation:
    """DeepCluster-style: per epoch k-means pseudo-labels on the latents and a new linear head
    trained with cross-entropy plus reconstruction; final labels by k-means on the latents
    (``decay_end``: as in ``train_epochs``)."""
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
        decay_end=decay_end,
        before_epoch=pseudo,
    )
    z, embed = latent_space(ae, state["ae"], x, mask)
    return _kmeans_segmentation(keys[-1], z, embed, n_segments, 4, history)


def _kmeans_segmentation(key, z, embed, n_segments: int, n_init: int, history) -> Segmentation:
    res = kmeans(key, z, n_segments, n_init=n_init)
    ones = np.ones(len(z), np.float32)
    return Segmentation(np.asarray(res.labels), z, ones, history, np.asarray(res.centroids), embed)


def latent_kmeans_segmentation(
    ae: Autoencoder, params: Params, x, mask, *, n_segments, key, n_init: int = 4
) -> Segmentation:
    """k-means++ (best of ``n_init`` restarts) on the pretrained latent, no joint training."""
    z, embed = latent_space(ae, params, x, mask)
    return _kmeans_segmentation(key, z, embed, n_segments, n_init, [])


def category_shares(category, mask, n_categories: int) -> np.ndarray:
    """Each user's share of events per category code: f[U, n_categories].

    Args:
      category: i32[U, L] category codes; mask: bool[U, L] real events.
    """
    counts = np.zeros((len(category), n_categories), np.float32)
    np.add.at(
        counts,
        (np.repeat(np.arange(len(category)), category.shape[1]), category.ravel()),
        mask.ravel(),
    )
    return counts / np.maximum(counts.sum(1, keepdims=True), 1.0)


def shares_embed(n_categories: int) -> Callable:
    """``Segmentation.embed`` of the category-share space (BoC-KM's and MST's)."""
    return lambda x, mask, category: category_shares(category, mask, n_categories)


def bag_of_categories_segmentation(
    category, mask, n_categories: int, *, n_segments, key, n_init: int = 4
) -> Segmentation:
    """k-means (best of ``n_init`` restarts) on each user's category shares
    (``category_shares``)."""
    shares = category_shares(category, mask, n_categories)
    return _kmeans_segmentation(key, shares, shares_embed(n_categories), n_segments, n_init, [])
