"""GRU and LSTM layers whose recurrence is a ``lax.scan``.

The input projection of every time step is one matmul before the scan; only the
hidden-to-hidden product runs inside it. Sequences of at most ``UNROLL_MAX_STEPS`` steps are
unrolled (no while loop; STMP's 4- and 7-step LSTMs: 1.39x its train step on CPU,
``experiments/benchmarks/stmp_step.py``; a 28-step window unrolled was 2x slower, so longer
ones stay a loop). ``GRU(impl="fused")`` runs the same math through
``dmeta.nn.fused_gru.gru_sequence``, whose custom VJP forms the weight gradients as one
matmul over all time steps (differentiable to any order in reverse mode).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from dmeta.nn.fused_gru import gru_sequence
from dmeta.types import Array

GRUImpl = Literal["scan", "fused"]
GRU_IMPLS = ("scan", "fused")
UNROLL_MAX_STEPS = 8


def _scan_time(step, h0, xs_proj: Array, remat: bool):
    """Runs ``step`` over axis -2 of ``xs_proj`` ([..., S, G]); returns (h_last, hs [..., S, H]).

    Unrolled when S <= ``UNROLL_MAX_STEPS`` (the same operations, without the loop)."""
    body = jax.checkpoint(step) if remat else step
    unroll = xs_proj.shape[-2] <= UNROLL_MAX_STEPS
    h_last, hs = jax.lax.scan(body, h0, jnp.moveaxis(xs_proj, -2, 0), unroll=unroll)
    return h_last, jnp.moveaxis(hs, 0, -2)


class GRU(nnx.Module):
    """Gated recurrent unit (PyTorch gate convention: reset, update, new).

    Args:
      in_features: F, size of each input step.
      hidden: H, size of the hidden state.
      remat: recompute the scan body in the backward pass (``jax.checkpoint``); with
        ``impl="scan"`` only (the fused backward saves the gates of every step).
      impl: ``"scan"``, autodiff of a ``lax.scan``; ``"fused"``, ``fused_gru.gru_sequence``
        (custom VJP, weight gradients as one matmul over all steps; reverse mode only).
        Same parameters and outputs.
      rngs: NNX random streams for initialization.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        *,
        remat: bool = False,
        impl: GRUImpl = "scan",
        rngs: nnx.Rngs,
    ):
        if impl not in GRU_IMPLS:
            raise ValueError(f"unknown GRU impl {impl!r}; use one of {GRU_IMPLS}")
        self.hidden = hidden
        self.remat = remat
        self.impl = impl if not remat else "scan"
        glorot = nnx.initializers.glorot_uniform()
        ortho = nnx.initializers.orthogonal()
        self.w_x = nnx.Param(glorot(rngs.params(), (in_features, 3 * hidden)))
        self.w_h = nnx.Param(
            jnp.concatenate([ortho(rngs.params(), (hidden, hidden)) for _ in range(3)], axis=1)
        )
        self.b_x = nnx.Param(jnp.zeros((3 * hidden,)))
        self.b_h = nnx.Param(jnp.zeros((3 * hidden,)))

    def __call__(self, x: Array, h0: Array | None = None, *, return_sequence: bool = False):
        """Encodes a sequence.

        Args:
          x: f32[..., S, F] inputs.
          h0: f32[..., H] initial state (zeros if None).
          return_sequence: also return every hidden state.

        Returns:
          h: f32[..., H] the last hidden state, and hs: f32[..., S, H] if requested.
        """
        hidden = self.hidden
        w_h, b_h = self.w_h[...], self.b_h[...]
        if self.impl == "fused":
            if h0 is None:
                h0 = jnp.zeros(x.shape[:-2] + (hidden,), jnp.result_type(x, w_h))
            weights = (self.w_x[...], self.b_x[...], w_h, b_h)
            if not return_sequence:
                return gru_sequence(*weights, x, h0, last_only=True)
            hs = gru_sequence(*weights, x, h0)
            return hs[..., -1, :], hs
        xs = x @ self.w_x[...] + self.b_x[...]
        if h0 is None:
            h0 = jnp.zeros(x.shape[:-2] + (hidden,), xs.dtype)

        def step(h, xp):
            hp = h @ w_h + b_h
            r = jax.nn.sigmoid(xp[..., :hidden] + hp[..., :hidden])
            z = jax.nn.sigmoid(xp[..., hidden : 2 * hidden] + hp[..., hidden : 2 * hidden])
            n = jnp.tanh(xp[..., 2 * hidden :] + r * hp[..., 2 * hidden :])
            h = (1.0 - z) * n + z * h
            return h, h

        h, hs = _scan_time(step, h0, xs, self.remat)
        return (h, hs) if return_sequence else h


class LSTM(nnx.Module):
    """Long short-term memory layer (gates: input, forget, cell, output).

    Args:
      in_features: F, size of each input step.
      hidden: H, size of the hidden and cell states.
      forget_bias: added to the forget gate at initialization.
      remat: recompute the scan body in the backward pass (``jax.checkpoint``).
      rngs: NNX random streams for initialization.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        *,
        forget_bias: float = 1.0,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.hidden = hidden
        self.remat = remat
        glorot = nnx.initializers.glorot_uniform()
        ortho = nnx.initializers.orthogonal()
        self.w_x = nnx.Param(glorot(rngs.params(), (in_features, 4 * hidden)))
        self.w_h = nnx.Param(
            jnp.concatenate([ortho(rngs.params(), (hidden, hidden)) for _ in range(4)], axis=1)
        )
        self.b = nnx.Param(jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(forget_bias))

    def cell(self, carry: tuple[Array, Array], xp: Array) -> tuple[Array, Array]:
        """One step from projected input ``xp: f32[..., 4H]``; carry is (h, c)."""
        h, c = carry
        g = xp + h @ self.w_h[...]
        hidden = self.hidden
        i = jax.nn.sigmoid(g[..., :hidden])
        f = jax.nn.sigmoid(g[..., hidden : 2 * hidden])
        u = jnp.tanh(g[..., 2 * hidden : 3 * hidden])
        o = jax.nn.sigmoid(g[..., 3 * hidden :])
        c = f * c + i * u
        h = o * jnp.tanh(c)
        return h, c

    def project(self, x: Array) -> Array:
        """Input projection of every step: f32[..., S, F] -> f32[..., S, 4H]."""
        return x @ self.w_x[...] + self.b[...]

    def __call__(self, x: Array, *, return_sequence: bool = False):
        """Encodes ``x: f32[..., S, F]``; returns h f32[..., H] (and hs f32[..., S, H])."""
        xs = self.project(x)
        zeros = jnp.zeros(x.shape[:-2] + (self.hidden,), xs.dtype)

        def step(carry, xp):
            carry = self.cell(carry, xp)
            return carry, carry[0]

        (h, _), hs = _scan_time(step, (zeros, zeros), xs, self.remat)
        return (h, hs) if return_sequence else h
