"""CDLtvS losses (section 4.2.3, 4.3.1). All take an optional ``weight: f32[N]`` (0 for padding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dmeta.types import Array


def _w(x: Array, weight: Array | None) -> Array:
    return jnp.ones(x.shape[:1], jnp.float32) if weight is None else weight.astype(jnp.float32)


def level_labels(v: Array, k: int, weight: Array | None = None) -> Array:
    """LTV level labels in a batch: ``floor(k * #{j: v_j < v_i} / |B|)`` in ``0..k-1``.

    Samples are ranked inside the batch and cut into k equal groups; ties share the lowest
    level of their group (so a zero mass never straddles two levels at random).

    Args:
      v: f32[N] LTV labels.
      k: number of levels (experts).
      weight: f32[N] 1 for real samples; padding is neither ranked nor counted.

    Returns:
      i32[N] levels.
    """
    w = _w(v, weight)
    below = jnp.sum(w[None, :] * (v[None, :] < v[:, None]), axis=1)
    return jnp.clip(jnp.floor(k * below / jnp.sum(w)), 0, k - 1).astype(jnp.int32)


def expert_classification_loss(logits: Array, levels: Array, weight: Array | None = None) -> Array:
    """L_EC (eq. 7-8): ``-1/|B| 1/k sum_i sum_j p_ij log softmax(logits)_ij`` with one-hot p.

    Args:
      logits: f32[N, k] ``FFN_smax(g_hat)``.
      levels: i32[N] level labels.
      weight: f32[N] sample weights.
    """
    w = _w(levels, weight)
    k = logits.shape[-1]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), levels[:, None], axis=-1)[:, 0]
    return -jnp.sum(w * logp) / (jnp.sum(w) * k)


def expert_ordinal_loss(logits: Array, levels: Array, weight: Array | None = None) -> Array:
    """L_EO (eq. 9-10) with ``p_j = sigmoid(logits_j)`` = P(level >= j):

    ``-1/|B| 1/k sum_i (sum_{j<=m_i} log p_ij + sum_{j>m_i} log(1 - p_ij))``.

    Eq. 9 prints ``1 - log p`` for the second sum; that term is unbounded below (p -> 0 sends
    it to +inf inside a minus sign), so the usual ordinal-regression ``log(1 - p)`` is used.
    The index sets are as printed (j = 0..m positive, j = m+1..k-1 negative).

    Args:
      logits: f32[N, k] ``FFN_smoid(g_hat)``.
      levels: i32[N] level labels m.
      weight: f32[N] sample weights.
    """
    w = _w(levels, weight)
    k = logits.shape[-1]
    positive = jnp.arange(k)[None, :] <= levels[:, None]
    ll = jnp.where(positive, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
    return -jnp.sum(w * ll.sum(-1)) / (jnp.sum(w) * k)


def ltv_loss(v: Array, pred: Array, weight: Array | None = None) -> Array:
    """L_LTV (eq. 11): mean absolute error (eq. 11 prints a stray minus sign; MAE is minimized)."""
    w = _w(v, weight)
    return jnp.sum(w * jnp.abs(v - pred)) / jnp.sum(w)


def _normalize(x: Array, eps: float = 1e-6) -> Array:
    """Rows scaled to unit norm; ``sqrt(|x|^2 + eps^2)`` keeps the gradient finite at 0."""
    return x / jnp.sqrt(jnp.sum(jnp.square(x), -1, keepdims=True) + eps**2)


def cosine(a: Array, b: Array) -> Array:
    """Row-wise cosine similarity of f32[N, d] and f32[N, d] -> f32[N] (0 for a zero row)."""
    return jnp.sum(_normalize(a) * _normalize(b), -1)


def infonce_loss(
    e_mo: Array,
    e_to: Array,
    paired: Array,
    weight: Array | None = None,
    *,
    temperature: float = 1.0,
) -> Array:
    """L_AP (eq. 15): InfoNCE of ``sim(e^m_i, e^t_i)`` against in-batch ``sim(e^m_i, e^t_j)``.

    Anchors are the paired (C_a) samples; candidates are all real samples of the batch (the
    positive included, as in InfoNCE). Averaged over anchors (eq. 15 sums; the mean keeps
    lambda_3 independent of the batch size). 0 when the batch has no C_a sample.

    Args:
      e_mo: f32[N, d] projected transferred source knowledge.
      e_to: f32[N, d] projected target representation.
      paired: bool[N] C_a membership.
      weight: f32[N] 1 for real samples.
      temperature: divides the cosine similarities (1 as in eq. 15).
    """
    w = _w(paired, weight)
    sim = _normalize(e_mo) @ _normalize(e_to).T / temperature  # [N, N]
    logz = jax.nn.logsumexp(jnp.where(w[None, :] > 0, sim, -jnp.inf), axis=1)
    anchor = w * paired.astype(jnp.float32)
    return -jnp.sum(anchor * (jnp.diagonal(sim) - logz)) / jnp.maximum(jnp.sum(anchor), 1.0)


def type_alignment_loss(
    e_mo: Array, e_to: Array, sparse: Array, weight: Array | None = None, *, margin: float = 0.1
) -> Array:
    """L_AT (eq. 16): ``mean_{C_na} max(0, sim - eta) + mean_{C_a} (1 - sim)``; an empty group
    contributes 0.

    Args:
      e_mo: f32[N, d]; e_to: f32[N, d].
      sparse: bool[N] C_na membership.
      weight: f32[N] 1 for real samples.
      margin: eta.
    """
    w = _w(sparse, weight)
    sim = cosine(e_mo, e_to)
    w_na = w * sparse.astype(jnp.float32)
    w_a = w - w_na
    na = jnp.sum(w_na * jnp.maximum(0.0, sim - margin)) / jnp.maximum(jnp.sum(w_na), 1.0)
    return na + jnp.sum(w_a * (1.0 - sim)) / jnp.maximum(jnp.sum(w_a), 1.0)
