"""C2M losses: masked reconstruction, clustering (eq. 6) and preference (eq. 7)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dmeta.cluster.kmeans import sq_distances


def reconstruction_loss(logits, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked cross-entropy summed over the three outputs, averaged over real events.

    Args:
      logits: (behaviour, item, category) logits, each ``f[B, L, V_f]``.
      x: i32[B, L, 3] target codes; mask: bool[B, L].
    """
    w = mask.astype(jnp.float32)
    total = 0.0
    for f, lg in enumerate(logits):
        logp = jax.nn.log_softmax(lg, axis=-1)
        nll = -jnp.take_along_axis(logp, x[..., f : f + 1], axis=-1)[..., 0]
        total = total + (nll * w).sum() / jnp.maximum(w.sum(), 1.0)
    return total


def clustering_loss(z: jax.Array, centroids: jax.Array, weights: jax.Array) -> jax.Array:
    """Eq. 6: ``sum_i w_i ||z_i - c(z_i)||^2 / (N - N_outlier)`` with ``c`` the nearest centroid.

    Args:
      z: f[B, Z] latents; centroids: f[K, Z]; weights: f[B], 0 for outliers and 1 otherwise.
    """
    d2 = jnp.min(sq_distances(z, centroids), axis=1)
    return (weights * d2).sum() / jnp.maximum(weights.sum(), 1.0)


def interaction_shares(behavior_p: jax.Array, target_p: jax.Array, mask: jax.Array) -> jax.Array:
    """Per user and behaviour type, the share of interactions with each item (or category).

    Args:
      behavior_p: f[B, L, J] behaviour-type probabilities (one-hot for the input sequence).
      target_p: f[B, L, U] item (or category) probabilities.
      mask: bool[B, L].

    Returns:
      f[B, J, U]: ``sum_l p(j) p(u) / sum_l p(j)`` (0 where the user has no type-j event).
    """
    bp = behavior_p * mask[..., None]
    joint = jnp.einsum("blj,blu->bju", bp, target_p)
    return joint / jnp.maximum(bp.sum(1)[..., None], 1e-9)


def preference_loss(
    logits, x: jax.Array, mask: jax.Array, behavior_weights: jax.Array
) -> jax.Array:
    """Eq. 7, averaged over users, for items and for categories.

    ``sum_j sum_u w_j freq_in(u) (freq_in(u) - freq_rec(u))^2``, with ``freq`` the per-type
    interaction shares of the input sequence and of the reconstruction (behaviour and item /
    category distributions of the decoder, independent per position).

    Args:
      logits: decoder (behaviour, item, category) logits, each ``f[B, L, V_f]``.
      x: i32[B, L, 3] input codes; mask: bool[B, L].
      behavior_weights: f[J] weight ``w_j`` of each behaviour code.
    """
    n_behaviors = logits[0].shape[-1]
    b_in = jax.nn.one_hot(x[..., 0], n_behaviors)
    b_rec = jax.nn.softmax(logits[0], axis=-1)
    total = 0.0
    for f in (1, 2):
        f_in = interaction_shares(b_in, jax.nn.one_hot(x[..., f], logits[f].shape[-1]), mask)
        f_rec = interaction_shares(b_rec, jax.nn.softmax(logits[f], axis=-1), mask)
        per_user = jnp.einsum("j,bju->b", behavior_weights, f_in * (f_in - f_rec) ** 2)
        total = total + per_user.mean()
    return total
