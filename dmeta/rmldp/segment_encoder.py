"""Data-driven segment representation (RMLDP section 4.3.1, eq. 9-10).

The aggregator MPFN_s encodes every support sample with a local and a seasonal
GRU (as MPFN does), projects the fused state to a code, and mean-pools the codes
over the real samples: ``q_d = mean_tc MPFN_s(X_tc)`` (eq. 9). The decoder MPFN_s_dec
maps each code back to both windows; the reconstruction loss is the mean squared
Frobenius norm of the error (eq. 10). The paper's decoder is an MPFN (``"mpfn"``: a
seasonal and a local GRU unrolled from the code); ``"linear"`` (one linear layer to both
windows, the decoder before issue #19) is kept as an ablation.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from flax import nnx

from dmeta.nn.rnn import GRU
from dmeta.types import Array, Split

Decoder = Literal["mpfn", "linear"]


class MPFNDecoder(nnx.Module):
    """MPFN_s_dec: for each window (seasonal, local) a GRU unrolled over S steps with the
    code as every step's input, from an initial state ``tanh(W_0 code + b_0)``; each state
    maps linearly to the F features.

    Args:
      q_dim: size of the code.
      seq_len: S.
      n_features: F.
      hidden: GRU state size of each branch.
      rngs: NNX random streams.
    """

    def __init__(self, q_dim: int, seq_len: int, n_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.seq_len = seq_len
        self.start = nnx.List([nnx.Linear(q_dim, hidden, rngs=rngs) for _ in range(2)])
        self.grus = nnx.List([GRU(q_dim, hidden, rngs=rngs) for _ in range(2)])
        self.out = nnx.List([nnx.Linear(hidden, n_features, rngs=rngs) for _ in range(2)])

    def __call__(self, code: Array) -> Array:
        """Reconstructed windows: f32[..., q_dim] -> f32[..., 2, S, F] (seasonal, local)."""
        steps = jnp.broadcast_to(
            code[..., None, :], (*code.shape[:-1], self.seq_len, code.shape[-1])
        )
        parts = []
        for start, gru, out in zip(self.start, self.grus, self.out):
            _, hs = gru(steps, jnp.tanh(start(code)), return_sequence=True)
            parts.append(out(hs))
        return jnp.stack(parts, axis=-3)


class LinearDecoder(nnx.Module):
    """One linear layer from the code to both windows (the ``"linear"`` ablation)."""

    def __init__(self, q_dim: int, seq_len: int, n_features: int, *, rngs: nnx.Rngs):
        self.shape = (2, seq_len, n_features)
        self.dec = nnx.Linear(q_dim, 2 * seq_len * n_features, rngs=rngs)

    def __call__(self, code: Array) -> Array:
        """Reconstructed windows: f32[..., q_dim] -> f32[..., 2, S, F] (seasonal, local)."""
        return self.dec(code).reshape(code.shape[:-1] + self.shape)


class SegmentEncoder(nnx.Module):
    """MPFN_s with its decoder.

    Args:
      n_features: F.
      seq_len: S, steps per window (the decoder output is f32[2, S, F]).
      hidden: GRU state size of each branch (encoder and MPFN decoder).
      q_dim: size of q_d (32 in Table 1).
      decoder: ``"mpfn"`` (the paper's) or ``"linear"``.
      rngs: NNX random streams.
    """

    def __init__(
        self,
        n_features: int,
        seq_len: int,
        hidden: int,
        q_dim: int,
        *,
        decoder: Decoder = "mpfn",
        rngs: nnx.Rngs,
    ):
        self.gru_local = GRU(n_features, hidden, rngs=rngs)
        self.gru_season = GRU(n_features, hidden, rngs=rngs)
        self.proj = nnx.Linear(2 * hidden, q_dim, rngs=rngs)
        if decoder == "mpfn":
            self.dec = MPFNDecoder(q_dim, seq_len, n_features, hidden, rngs=rngs)
        elif decoder == "linear":
            self.dec = LinearDecoder(q_dim, seq_len, n_features, rngs=rngs)
        else:
            raise ValueError(f"decoder={decoder!r}; use 'mpfn' or 'linear'")

    def codes(self, x_local: Array, x_season: Array) -> Array:
        """Per-sample codes MPFN_s(X): f32[N, S, F] x2 -> f32[N, q_dim]."""
        h = jnp.concatenate([self.gru_season(x_season), self.gru_local(x_local)], axis=-1)
        return jnp.tanh(self.proj(h))

    def __call__(self, split: Split) -> tuple[Array, Array]:
        """Segment representation and reconstruction loss of one support set.

        Args:
          split: a task's support ``Split`` (x f32[N, S, F], mask f32[N]).

        Returns:
          (q_d f32[q_dim] (eq. 9), L_rec f32[] (eq. 10)); both average real samples only.
        """
        code = self.codes(split.x_local, split.x_season)
        weight = split.mask / jnp.maximum(jnp.sum(split.mask), 1.0)
        q_d = weight @ code
        x = jnp.stack([split.x_season, split.x_local], axis=-3)  # [N, 2, S, F]
        rec = jnp.sum((x - self.dec(code)) ** 2, axis=(-3, -2, -1))
        return q_d, weight @ rec
