"""Transformer autoencoder over behaviour sequences (C2M 3.1.2, eq. 1-5), written in flax.nnx.

Encoder: summed embeddings of (behaviour, item, category) + sinusoidal positions (eq. 4-5),
pre-norm multi-head self-attention blocks (eq. 1-3) with the padding mask, masked mean pooling
and a linear map to the latent ``z``. Decoder: ``z`` broadcast over positions plus the position
encoding, the same kind of blocks, and three heads giving logits over behaviour types, items and
categories. Dropout (the paper's 20%) acts on the input embeddings and on every attention and
MLP output when a ``key`` is given (training); without one the model is deterministic.
Run it functionally: ``apply, params = dmeta.nn.functional.split_params(model)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """Eq. 4-5: ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)``. f32[L, d]."""
    pos = np.arange(length)[:, None]
    rate = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)
    pe = np.zeros((length, dim), np.float32)
    pe[:, 0::2] = np.sin(pos * rate)
    pe[:, 1::2] = np.cos(pos * rate)[:, : dim // 2]
    return pe


def per_token(layer: nnx.Linear, h: jax.Array) -> jax.Array:
    """``layer`` on ``h: f[..., d]`` as one 2-D matmul over the flattened tokens.

    Same values as ``layer(h)``; on XLA's CPU backend the backward pass of the batched 3-D
    form transposes the ``f[B, L, V]`` gradient first, which costs as much as the matmul.
    """
    return layer(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], layer.out_features)


def dropout(h: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout of ``h`` (any shape); the identity without ``key`` or at rate 0."""
    if key is None or rate == 0.0:
        return h
    keep = jax.random.bernoulli(key, 1.0 - rate, h.shape)
    return jnp.where(keep, h / (1.0 - rate), 0.0)


class Block(nnx.Module):
    """Pre-norm self-attention + MLP block."""

    def __init__(self, d_model: int, n_heads: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.dropout = dropout
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=n_heads, in_features=d_model, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp1 = nnx.Linear(d_model, 2 * d_model, rngs=rngs)
        self.mlp2 = nnx.Linear(2 * d_model, d_model, rngs=rngs)

    def __call__(self, h: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """``h: f[B, L, d]``, ``mask: bool[B, L]``; ``key``: dropout (training) or None."""
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        att = self.attn(self.norm1(h), mask=nnx.make_attention_mask(mask, mask))
        h = h + dropout(att, self.dropout, k1)
        mlp = per_token(self.mlp2, jax.nn.gelu(per_token(self.mlp1, self.norm2(h))))
        return h + dropout(mlp, self.dropout, k2)


class BehaviorAutoencoder(nnx.Module):
    """Sequence autoencoder with a pooled latent; see the module docstring."""

    def __init__(
        self,
        *,
        n_behaviors: int,
        n_items: int,
        n_categories: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        latent_dim: int = 16,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.dropout = dropout
        self.embed = nnx.List(
            [nnx.Embed(n, d_model, rngs=rngs) for n in (n_behaviors, n_items, n_categories)]
        )
        blocks = lambda: nnx.List(
            [Block(d_model, n_heads, dropout=dropout, rngs=rngs) for _ in range(n_layers)]
        )
        self.encoder = blocks()
        self.to_latent = nnx.Linear(d_model, latent_dim, rngs=rngs)
        self.from_latent = nnx.Linear(latent_dim, d_model, rngs=rngs)
        self.decoder = blocks()
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.heads = nnx.List(
            [nnx.Linear(d_model, n, rngs=rngs) for n in (n_behaviors, n_items, n_categories)]
        )

    def _blocks(self, blocks, h, mask, key):
        keys = [None] * (len(blocks) + 1) if key is None else jax.random.split(key, len(blocks) + 1)
        h = dropout(h, self.dropout, keys[0])
        for block, k in zip(blocks, keys[1:]):
            h = block(h, mask, k)
        return h

    def encode(self, x: jax.Array, mask: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """``x: i32[B, L, 3]`` codes, ``mask: bool[B, L]`` -> latent ``f[B, latent_dim]``
        (``key``: dropout)."""
        pe = sinusoidal_positions(x.shape[1], self.from_latent.out_features)
        h = sum(e(x[..., i]) for i, e in enumerate(self.embed)) + pe
        h = self._blocks(self.encoder, h, mask, key)
        w = mask[..., None].astype(h.dtype)
        pooled = (h * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        return self.to_latent(pooled)

    def decode(
        self, z: jax.Array, mask: jax.Array, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Latent ``f[B, Z]`` -> logits over behaviours, items and categories, each
        ``f[B, L, V]`` (``key``: dropout)."""
        pe = sinusoidal_positions(mask.shape[1], self.from_latent.out_features)
        h = self.from_latent(z)[:, None, :] + pe
        h = self.norm(self._blocks(self.decoder, h, mask, key))
        return tuple(per_token(head, h) for head in self.heads)

    def __call__(self, x: jax.Array, mask: jax.Array, key: jax.Array | None = None):
        """Returns ``(z, (behaviour, item, category) logits)``; ``key``: dropout (training)."""
        k_enc, k_dec = (None, None) if key is None else jax.random.split(key)
        z = self.encode(x, mask, k_enc)
        return z, self.decode(z, mask, k_dec)
