"""Data-driven segment representation (RMLDP section 4.3.1, eq. 9-10).

The aggregator MPFN_s encodes every support sample with a local and a seasonal
GRU (as MPFN does), projects the fused state to a code, and mean-pools the codes
over the real samples: ``q_d = mean_tc MPFN_s(X_tc)`` (eq. 9). A linear decoder
MPFN_s_dec maps each code back to both windows; the reconstruction loss is the
mean squared Frobenius norm of the error (eq. 10).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from dmeta.nn.rnn import GRU
from dmeta.types import Array, Split


class SegmentEncoder(nnx.Module):
    """MPFN_s with its decoder.

    Args:
      n_features: F.
      seq_len: S, steps per window (the decoder output is f32[2, S, F]).
      hidden: GRU state size of each branch.
      q_dim: size of q_d (32 in Table 1).
      rngs: NNX random streams.
    """

    def __init__(self, n_features: int, seq_len: int, hidden: int, q_dim: int, *, rngs: nnx.Rngs):
        self.shape = (2, seq_len, n_features)
        self.gru_local = GRU(n_features, hidden, rngs=rngs)
        self.gru_season = GRU(n_features, hidden, rngs=rngs)
        self.proj = nnx.Linear(2 * hidden, q_dim, rngs=rngs)
        self.dec = nnx.Linear(q_dim, 2 * seq_len * n_features, rngs=rngs)

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
        x_hat = self.dec(code).reshape(code.shape[:-1] + self.shape)
        rec = jnp.sum((x - x_hat) ** 2, axis=(-3, -2, -1))
        return q_d, weight @ rec
