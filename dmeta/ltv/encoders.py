"""Feature encoders of LtvS (section 4.2.1): DeepFM for portraits, TCN for consumption series."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dmeta.types import Array


def series_inputs(series: Array, observed: Array) -> Array:
    """f32[N, L, 2] TCN input: ``log1p`` of the (non-negative) amounts and the availability flag.

    Args:
      series: f32[N, L] consumption per period.
      observed: f32[N, L] 1 where history is available (0 for removed C_na history).
    """
    return jnp.stack([jnp.log1p(jnp.maximum(series, 0.0)), observed], axis=-1)


class DeepFM(nnx.Module):
    """DeepFM (Guo et al. 2017) over categorical and numeric fields, projected to ``hidden``.

    Every field j has an embedding ``v_j`` (a table row for categorical fields, ``x_j * w_j`` for
    numeric ones) and a first-order weight. The FM part gives the first-order sum and the
    pairwise interaction vector ``0.5 * ((sum v)^2 - sum v^2)``; the deep part is an MLP over
    the concatenated embeddings. Output: ``Linear([fm_first, fm_pair, deep]) -> f32[N, hidden]``.

    Args:
      cat_sizes: number of levels per categorical field.
      n_num: number of numeric fields.
      hidden: output size h.
      emb: per-field embedding size.
      rngs: NNX random streams.
    """

    def __init__(
        self, cat_sizes: tuple[int, ...], n_num: int, hidden: int, *, emb: int = 8, rngs: nnx.Rngs
    ):
        self.offsets = tuple(int(sum(cat_sizes[:i])) for i in range(len(cat_sizes)))
        n_fields = len(cat_sizes) + n_num
        self.table = nnx.Embed(sum(cat_sizes), emb, rngs=rngs)
        self.first = nnx.Embed(sum(cat_sizes), 1, rngs=rngs)
        self.num_emb = nnx.Param(jax.random.normal(rngs.params(), (n_num, emb)) * 0.1)
        self.num_first = nnx.Param(jnp.zeros((n_num,)))
        self.deep1 = nnx.Linear(n_fields * emb, hidden, rngs=rngs)
        self.deep2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(1 + emb + hidden, hidden, rngs=rngs)

    def __call__(self, cat: Array, num: Array) -> Array:
        """Encodes portraits.

        Args:
          cat: i32[N, C] categorical codes.
          num: f32[N, M] numeric features.

        Returns:
          f32[N, hidden] portrait embedding ``e^p``.
        """
        idx = cat + jnp.asarray(self.offsets, jnp.int32)
        v = jnp.concatenate([self.table(idx), num[..., None] * self.num_emb[...]], axis=-2)
        first = self.first(idx)[..., 0].sum(-1) + num @ self.num_first[...]
        pair = 0.5 * (jnp.square(v.sum(-2)) - jnp.square(v).sum(-2))
        deep = nnx.relu(self.deep2(nnx.relu(self.deep1(v.reshape(v.shape[:-2] + (-1,))))))
        return self.out(jnp.concatenate([first[..., None], pair, deep], axis=-1))


class TCN(nnx.Module):
    """Temporal convolutional network (Bai et al. 2018): residual blocks of two dilated causal
    convolutions (dilation 2^i in block i), ReLU, 1x1 skip where widths differ.

    Args:
      in_features: F per step.
      hidden: channels and output size h.
      levels: number of residual blocks (receptive field ``1 + 2 (kernel - 1)(2^levels - 1)``).
      kernel: convolution width.
      rngs: NNX random streams.
    """

    def __init__(
        self, in_features: int, hidden: int, *, levels: int = 3, kernel: int = 2, rngs: nnx.Rngs
    ):
        self.convs1 = nnx.List()
        self.convs2 = nnx.List()
        self.skips = nnx.List()
        for i in range(levels):
            width = in_features if i == 0 else hidden
            conv = dict(kernel_size=(kernel,), padding="CAUSAL", kernel_dilation=(2**i,), rngs=rngs)
            self.convs1.append(nnx.Conv(width, hidden, **conv))
            self.convs2.append(nnx.Conv(hidden, hidden, **conv))
            self.skips.append(nnx.Linear(width, hidden, rngs=rngs) if width != hidden else None)

    def __call__(self, x: Array, *, sequence: bool = False) -> Array:
        """Encodes a series.

        Args:
          x: f32[N, L, F] inputs (see :func:`series_inputs`).
          sequence: return every step's output instead of the last one.

        Returns:
          f32[N, hidden] the last step's output ``e^l`` (f32[N, L, hidden] with ``sequence``).
        """
        for conv1, conv2, skip in zip(self.convs1, self.convs2, self.skips, strict=True):
            y = conv2(nnx.relu(conv1(x)))
            x = nnx.relu(y + (x if skip is None else skip(x)))
        return x if sequence else x[..., -1, :]


def output_relu(x: Array, leak: float = 0.01) -> Array:
    """ReLU for LTV outputs whose backward pass leaks ``leak`` below zero.

    The forward value is exactly ``relu(x)`` (eq. 5, 14); the leak lets a sample whose output
    went negative come back, so an MAE-trained output cannot die for good on zero-mass labels.
    """
    return jnp.maximum(x, 0.0) + leak * (
        jnp.minimum(x, 0.0) - jax.lax.stop_gradient(jnp.minimum(x, 0.0))
    )
