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


def preference_loss(
    logits, x: jax.Array, mask: jax.Array, behavior_weights: jax.Array
) -> jax.Array:
    """Eq. 7, averaged over users, for items and for categories.

    ``sum_j sum_u w_j freq_in(j, u) (freq_in(j, u) - freq_rec(j, u))^2``, with ``freq(j, u)``
    the share of a user's type-j interactions that are with item (or category) u, of the
    input sequence and of the reconstruction (behaviour and item / category distributions of
    the decoder, independent per position: ``sum_l p_l(j) p_l(u) / sum_l p_l(j)``).

    Only the (j, u) pairs of the user's own events have ``freq_in > 0``, so the sum runs
    over those events (each pair divided by its multiplicity) and ``freq_rec`` is needed
    only there: the decoder's probability of each event's target at every position,
    ``f[B, L, L]``, instead of the per-type shares over the whole vocabulary,
    ``f[B, J, V]`` (the same value; the dense form is the reference in the tests).

    Args:
      logits: decoder (behaviour, item, category) logits, each ``f[B, L, V_f]``.
      x: i32[B, L, 3] input codes; mask: bool[B, L].
      behavior_weights: f[J] weight ``w_j`` of each behaviour code.
    """
    m = mask.astype(jnp.float32)
    j_in = x[..., 0]  # [B, L'] each event's behaviour
    same_j = (j_in[:, :, None] == j_in[:, None, :]) * m[:, None, :]  # [B, L', L'']
    n_j = same_j.sum(-1)  # [B, L'] valid events of the event's behaviour
    # the reconstruction's behaviour probability at every position l of each event's type
    b_rec = jax.nn.softmax(logits[0], axis=-1) * m[..., None]  # [B, L, J]
    b_at = jnp.take_along_axis(
        b_rec, jnp.broadcast_to(j_in[:, None, :], b_rec.shape[:2] + j_in.shape[1:]), axis=-1
    )  # [B, L, L']
    w = behavior_weights[j_in] * m  # [B, L']
    total = 0.0
    for f in (1, 2):
        u_in = x[..., f]
        mult = (same_j * (u_in[:, :, None] == u_in[:, None, :])).sum(-1)  # [B, L']
        f_in = mult / jnp.maximum(n_j, 1.0)
        lse = jax.nn.logsumexp(logits[f], axis=-1, keepdims=True)  # [B, L, 1]
        idx = jnp.broadcast_to(
            u_in[:, None, :], u_in.shape[:1] + (logits[f].shape[1],) + u_in.shape[1:]
        )
        p_at = jnp.exp(jnp.take_along_axis(logits[f], idx, axis=-1) - lse)  # [B, L, L']
        f_rec = (b_at * p_at).sum(1) / jnp.maximum(b_at.sum(1), 1e-9)  # [B, L']
        per_event = w * f_in * (f_in - f_rec) ** 2 / jnp.maximum(mult, 1.0)
        total = total + per_event.sum(-1).mean()
    return total
