"""GRU recurrence with a hand-written VJP that batches every weight gradient over time.

``gru_sequence(w_x, b_x, w_h, b_h, x, h0)`` computes the same hidden states as the plain
``lax.scan`` GRU of ``dmeta.nn.rnn`` (PyTorch gate convention: reset, update, new):

- forward: the input projection of all time steps is one matmul ``[B*S, F] @ [F, 3H]``
  before the scan; the scan does one ``[B, H] @ [H, 3H]`` per step and saves the gates;
- backward: a reverse scan carries only ``dh`` (one ``[B, 3H] @ [3H, H]`` per step and the
  gate algebra); the gradients of ``w_h``, ``b_h``, ``w_x``, ``b_x`` and ``x`` are formed
  after it as single contractions over all ``S * B`` rows, instead of the ``S``
  accumulating ``[H, B] @ [B, 3H]`` products that autodiff of a scan produces.

The backward is written in ordinary differentiable JAX ops, so the function has derivatives
of every order in reverse mode (MAML's second-order meta-gradient differentiates through the
inner gradient, i.e. through this backward). Forward-mode (``jax.jvp``) is not supported,
as for any ``jax.custom_vjp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dmeta.types import Array


def _mm(spec: str, a: Array, b: Array, dtype) -> Array:
    """``einsum(spec, a, b)``; with ``dtype`` (e.g. bfloat16) the operands are cast to it and
    the products accumulate in ``a``'s dtype (``preferred_element_type``)."""
    if dtype is None:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(
        spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.result_type(a, b)
    )


def _gates(hidden: int, xp: Array, hp: Array, h: Array):
    """One step's gates from projected input xp and hidden product hp ([B, 3H] each)."""
    r = jax.nn.sigmoid(xp[..., :hidden] + hp[..., :hidden])
    z = jax.nn.sigmoid(xp[..., hidden : 2 * hidden] + hp[..., hidden : 2 * hidden])
    n = jnp.tanh(xp[..., 2 * hidden :] + r * hp[..., 2 * hidden :])
    return r, z, n, (1.0 - z) * n + z * h


def _forward(dtype, w_x, b_x, w_h, b_h, x, h0):
    """Returns hs f32[S, B, H] (time first) and the residuals of every step."""
    hidden = w_h.shape[0]
    xs = _mm("bsf,fg->sbg", x, w_x, dtype) + b_x  # one matmul over all steps, time first

    def step(h, xp):
        hp = _mm("bh,hg->bg", h, w_h, dtype) + b_h
        r, z, n, h_new = _gates(hidden, xp, hp, h)
        return h_new, (h_new, r, z, n, hp[..., 2 * hidden :])

    _, (hs, r, z, n, hpn) = jax.lax.scan(step, h0, xs)
    return hs, (r, z, n, hpn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru_sequence(dtype, w_x, b_x, w_h, b_h, x, h0):
    return jnp.swapaxes(_forward(dtype, w_x, b_x, w_h, b_h, x, h0)[0], 0, 1)


def _fwd(dtype, w_x, b_x, w_h, b_h, x, h0):
    hs, (r, z, n, hpn) = _forward(dtype, w_x, b_x, w_h, b_h, x, h0)
    return jnp.swapaxes(hs, 0, 1), (w_x, w_h, x, h0, hs, r, z, n, hpn)


def _bwd(dtype, res, g):
    w_x, w_h, x, h0, hs, r, z, n, hpn = res
    hidden = w_h.shape[0]
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # [S, B, H]
    g = jnp.swapaxes(g, 0, 1)  # time first
    w_h_t = w_h.T

    def step(dh, inputs):
        g_t, r_t, z_t, n_t, hpn_t, hprev_t = inputs
        dh = dh + g_t
        dan = dh * (1.0 - z_t) * (1.0 - n_t * n_t)
        dar = dan * hpn_t * r_t * (1.0 - r_t)
        daz = dh * (hprev_t - n_t) * z_t * (1.0 - z_t)
        dhp = jnp.concatenate([dar, daz, dan * r_t], axis=-1)
        return dh * z_t + _mm("bg,gh->bh", dhp, w_h_t, dtype), (dhp, dan)

    dh0, (dhp, dan) = jax.lax.scan(
        step, jnp.zeros_like(h0), (g, r, z, n, hpn, h_prev), reverse=True
    )
    dxs = jnp.concatenate([dhp[..., : 2 * hidden], dan], axis=-1)  # [S, B, 3H]
    d_w_h = _mm("sbh,sbg->hg", h_prev, dhp, dtype)
    d_b_h = jnp.sum(dhp, axis=(0, 1))
    d_w_x = _mm("bsf,sbg->fg", x, dxs, dtype)
    d_b_x = jnp.sum(dxs, axis=(0, 1))
    d_x = _mm("sbg,fg->bsf", dxs, w_x, dtype)
    return d_w_x, d_b_x, d_w_h, d_b_h, d_x, dh0


_gru_sequence.defvjp(_fwd, _bwd)


def gru_sequence(
    w_x: Array,
    b_x: Array,
    w_h: Array,
    b_h: Array,
    x: Array,
    h0: Array,
    *,
    matmul_dtype=None,
) -> Array:
    """Every hidden state of a GRU: x f32[..., S, F], h0 f32[..., H] -> hs f32[..., S, H].

    Weights: w_x [F, 3H], b_x [3H], w_h [H, 3H], b_h [3H] (gates reset, update, new).
    ``matmul_dtype`` (e.g. ``jnp.bfloat16``): every matmul of the forward and backward takes
    its operands in that dtype and accumulates in the inputs' dtype; gates stay f32.
    Experimental: jaxlib 0.10.2 on CPU compiles the MAML meta-step with bf16 but fails at run
    time (``DotThunk``: BF16 x BF16 = F32 unsupported for some of its dots).
    """
    batch = x.shape[:-2]
    s, f = x.shape[-2:]
    x2 = x.reshape((-1, s, f))
    h2 = jnp.broadcast_to(h0, batch + h0.shape[-1:]).reshape((-1, h0.shape[-1]))
    hs = _gru_sequence(matmul_dtype, w_x, b_x, w_h, b_h, x2, h2)
    return hs.reshape(batch + hs.shape[-2:])
