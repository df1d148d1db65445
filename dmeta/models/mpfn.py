"""Multi-pattern fusion network (RMLDP section 4.1, eq. 2-5).

One GRU reads the last |T_c| records before the current time t_c (local
pattern, eq. 2), a second GRU reads the |T_c| records ending at
t_l = t_c + T_g - season (seasonal pattern, eq. 3); their last states are
concatenated and a linear layer predicts the target demand (eq. 4). The loss is
the (masked) mean squared error of eq. 5.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from dmeta.nn.rnn import GRU, GRUImpl
from dmeta.types import Array, Split

DEFAULT_GRU_IMPL: GRUImpl = "fused"


class MPFN(nnx.Module):
    """Two-GRU demand predictor.

    Args:
      n_features: F, features per record (demand first, then external features).
      hidden: H, GRU state size (128 in the paper's Table 1).
      use_local: keep GRU_r over the local window (False gives RMLDP-local).
      use_season: keep GRU_l over the seasonal window (False gives RMLDP-szn).
      remat: ``jax.checkpoint`` the GRU scans (``impl="scan"`` only).
      gru_impl: ``dmeta.nn.rnn.GRU`` implementation, ``"scan"`` or ``"fused"`` (same
        parameters and outputs; see ``dmeta.nn.fused_gru``).
      rngs: NNX random streams.
    """

    def __init__(
        self,
        n_features: int,
        hidden: int = 128,
        *,
        use_local: bool = True,
        use_season: bool = True,
        remat: bool = False,
        gru_impl: GRUImpl = DEFAULT_GRU_IMPL,
        rngs: nnx.Rngs,
    ):
        if not (use_local or use_season):
            raise ValueError("MPFN needs at least one of the local and seasonal branches")
        gru = dict(remat=remat, impl=gru_impl, rngs=rngs)
        self.gru_local = GRU(n_features, hidden, **gru) if use_local else None
        self.gru_season = GRU(n_features, hidden, **gru) if use_season else None
        self.head = nnx.Linear(hidden * (use_local + use_season), 1, rngs=rngs)

    def encode(self, x_local: Array, x_season: Array) -> Array:
        """Fused representation h_hat = h_l (+) h_r: f32[..., S, F] x2 -> f32[..., H * branches]."""
        parts = []
        if self.gru_season is not None:
            parts.append(self.gru_season(x_season))
        if self.gru_local is not None:
            parts.append(self.gru_local(x_local))
        return jnp.concatenate(parts, axis=-1)

    def __call__(self, x_local: Array, x_season: Array) -> Array:
        """Predicted target demand: f32[..., S, F] x2 -> f32[...]."""
        return self.head(self.encode(x_local, x_season))[..., 0]


def masked_mse(pred: Array, y: Array, mask: Array) -> Array:
    """Mean squared error over real samples: f32[N] x3 -> f32[] (eq. 5, averaged)."""
    return jnp.sum(mask * (pred - y) ** 2) / jnp.maximum(jnp.sum(mask), 1.0)


def split_loss(apply, params, split: Split) -> Array:
    """MSE of ``apply(params, x_local, x_season)`` on one task's ``Split``."""
    return masked_mse(apply(params, split.x_local, split.x_season), split.y, split.mask)
