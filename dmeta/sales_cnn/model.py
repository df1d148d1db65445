"""The sales CNN (Zhao & Wang, section 3.2): wide per-indicator convolutions over Data Frames.

Every convolution runs along time on each indicator row separately with its own
filter (a filter bank ``F in R^{d x m}``, eq. 9). Order ``i`` computes ``K_i``
maps; map ``j`` sums the convolutions of all ``K_{i-1}`` maps of order ``i-1``
with distinct banks ``F^i_{j,k}`` (eq. 13), so the four input matrices of the
Data Frame (order 0) get distinct filter banks. Then ReLU and max-pooling of
length ``k`` to ``ceil(len / k)`` (eq. 11-12); after the last order: flatten,
dropout, dense ``n`` with ReLU (eq. 14) and a linear output (eq. 15).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dmeta.types import Array, Key

PAPER_ORDERS = ((7, 7), (4, 4), (3, 3))  # (filter size m, pooling length k), section 4.4


def wide_conv(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """Wide per-row convolution summed over input maps (eq. 8, 9, 13 before ReLU).

    ``c_j = f^T s_{j-m+1:j} + b`` with zero padding outside the sequence, for
    every indicator row with its own filters: one batched matmul over rows.

    Args:
      x: f32[D, B, S, K_in] input maps, indicator rows first.
      kernel: f32[D, m, K_in, K_out] one filter per (row, input map, output map).
      bias: f32[D, K_out], or None for none.

    Returns:
      f32[D, B, S + m - 1, K_out].
    """
    d, b, s, k_in = x.shape
    m = kernel.shape[1]
    padded = jnp.pad(x, ((0, 0), (0, 0), (m - 1, m - 1), (0, 0)))
    patches = jnp.concatenate([padded[:, :, o : o + s + m - 1] for o in range(m)], axis=-1)
    out = jax.lax.dot_general(
        patches.reshape(d, -1, m * k_in),
        kernel.reshape(d, m * k_in, -1),
        (((2,), (1,)), ((0,), (0,))),
    )
    out = out.reshape(d, b, s + m - 1, -1)
    return out if bias is None else out + bias[:, None, None, :]


def conv_relu_pool(x: Array, kernel: Array, bias: Array, k: int) -> Array:
    """One order: ``max_pool(relu(wide_conv(x)), k)``, pooling before bias and ReLU.

    Both are monotone per output map, so they commute with the max; applying them
    after pooling touches ``k`` times fewer values.

    x: f32[D, B, S, K_in] -> f32[D, B, ceil((S + m - 1) / k), K_out].
    """
    pooled = max_pool(wide_conv(x, kernel), k)
    return jax.nn.relu(pooled + bias[:, None, None, :])


def max_pool(x: Array, k: int) -> Array:
    """Max-pooling of length ``k`` along time (axis 2) to ``ceil(S / k)`` values (eq. 11).

    x: f32[D, B, S, K] -> f32[D, B, ceil(S / k), K].
    """
    d, b, s, c = x.shape
    full = s // k
    pooled = x[:, :, : full * k].reshape(d, b, full, k, c).max(3)
    if s == full * k:
        return pooled
    return jnp.concatenate([pooled, x[:, :, full * k :].max(2, keepdims=True)], axis=2)


def output_length(length: int, orders: tuple[tuple[int, int], ...]) -> int:
    """Time length after all (wide conv m, pool k) orders."""
    for m, k in orders:
        length = math.ceil((length + m - 1) / k)
    return length


def dropout(x: Array, rate: float, key: Key | None) -> Array:
    """Inverted dropout; identity when ``key`` is None (evaluation)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class WideConv(nnx.Module):
    """One order of per-indicator wide convolutions: ``K_in`` maps -> ``K_out`` maps.

    Parameters are float32; ``dtype`` is the compute dtype (kernel and bias are cast).
    """

    def __init__(
        self,
        n_indicators: int,
        k_in: int,
        k_out: int,
        m: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        scale = 1.0 / math.sqrt(k_in * m)
        self.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (n_indicators, m, k_in, k_out), minval=-1) * scale
        )
        self.bias = nnx.Param(jnp.zeros((n_indicators, k_out)))

    def __call__(self, x: Array, pool: int) -> Array:
        """x: [D, B, S, K_in] -> dtype[D, B, ceil((S + m - 1) / pool), K_out]."""
        kernel, bias = (self.kernel[...].astype(self.dtype), self.bias[...].astype(self.dtype))
        return conv_relu_pool(x.astype(self.dtype), kernel, bias, pool)


class SalesCNN(nnx.Module):
    """Data Frame -> total sales over the target interval.

    Args:
      n_indicators: ``d`` rows of each indicator matrix.
      length: frame length ``T``.
      n_inputs: indicator matrices per frame (4: item, brand, category, region).
      orders: (filter size, pooling length) per order; paper (7,7), (4,4), (3,3).
      maps: ``K`` maps per order (paper 128).
      hidden: ``n`` of the dense feature layer (paper 1024).
      rate: dropout rate on the flattened maps (paper 0.2).
      dtype: compute dtype of the convolutions and the dense layer; ``jnp.bfloat16``
        halves activation memory and uses bf16 matrix units on GPU/TPU. Parameters,
        the output layer and the loss stay float32 (mixed precision; this network is
        trained first-order, ``tests/test_sales_cnn_model.py`` checks bf16 training).
    """

    def __init__(
        self,
        n_indicators: int,
        length: int,
        *,
        n_inputs: int = 4,
        orders: tuple[tuple[int, int], ...] = PAPER_ORDERS,
        maps: int = 128,
        hidden: int = 1024,
        rate: float = 0.2,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.pools = tuple(k for _, k in orders)
        self.rate = rate
        widths = (n_inputs,) + (maps,) * len(orders)
        self.convs = nnx.List(
            [
                WideConv(n_indicators, k_in, k_out, m, dtype=dtype, rngs=rngs)
                for (m, _), k_in, k_out in zip(orders, widths[:-1], widths[1:], strict=True)
            ]
        )
        flat = maps * n_indicators * output_length(length, orders)
        self.dense = nnx.Linear(flat, hidden, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: Array, key: Key | None = None) -> Array:
        """x: f32[B, 4, D, T] z-scored frames; ``key`` enables dropout. Returns f32[B]."""
        batch = x.shape[0]
        x = jnp.transpose(x, (2, 0, 3, 1))  # [D, B, T, 4]
        for conv, k in zip(self.convs, self.pools, strict=True):
            x = conv(x, k)
        p = dropout(jnp.transpose(x, (1, 0, 2, 3)).reshape(batch, -1), self.rate, key)
        hidden = jax.nn.relu(self.dense(p)).astype(jnp.float32)
        return self.out(hidden)[:, 0]
