"""Relation-aware modulation of an initialization (RMLDP eq. 11-12).

``M(q) = sigmoid(W_m q + b_m)`` is produced as one flat vector and reshaped into a
pytree of multipliers with the structure of ``theta``; ``theta_0i = M(q_i) * theta_0``.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from dmeta.types import Array, Key, Params


def modulate(multipliers: Params, theta: Params) -> Params:
    """Elementwise ``multipliers * theta`` (eq. 12); both pytrees share one structure."""
    return jax.tree.map(lambda m, w: m * w, multipliers, theta)


def unflatten_like(flat: Array, theta: Params) -> Params:
    """Reshapes ``flat: f32[P]`` (P = total size of theta) into theta's structure."""
    leaves, treedef = jax.tree.flatten(theta)
    sizes = [math.prod(leaf.shape) for leaf in leaves]
    if flat.shape[-1] != sum(sizes):
        raise ValueError(f"flat vector has {flat.shape[-1]} entries, theta has {sum(sizes)}")
    chunks = jnp.split(flat, list(itertools.accumulate(sizes))[:-1], axis=-1)
    return jax.tree.unflatten(treedef, [c.reshape(leaf.shape) for c, leaf in zip(chunks, leaves)])


def init_modulator(
    key: Key, q_dim: int, theta: Params, *, scale: float = 1e-2, bias: float = 3.0
) -> Params:
    """Parameters ``{"w": f32[q_dim, P], "b": f32[P]}`` of M for an initialization like ``theta``.

    ``b`` starts at ``bias``: 3 gives sigmoid(3) = 0.95, so training starts close to plain
    MAML (theta_0i = 0.95 theta_0); 0, a plain linear layer's bias (the paper gives none),
    starts at theta_0i = 0.5 theta_0. ``w`` starts small (``scale``).
    """
    n_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(theta))
    w = scale * jax.random.normal(key, (q_dim, n_params)) / math.sqrt(q_dim)
    return {"w": w, "b": jnp.full((n_params,), bias, jnp.float32)}


def modulator(m_params: Params, q: Array, theta: Params) -> Params:
    """Multipliers M(q) (eq. 11) for one segment representation ``q: f32[q_dim]``."""
    return unflatten_like(jax.nn.sigmoid(q @ m_params["w"] + m_params["b"]), theta)
