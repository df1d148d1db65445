"""GRU recurrence with a hand-written VJP that batches every weight gradient over time.

``gru_sequence`` (every state, or with ``last_only`` the last one) computes the same hidden
states as the plain ``lax.scan`` GRU of ``dmeta.nn.rnn`` (PyTorch gate convention: reset,
update, new):

- forward: the input is put time first once, and the input projection of all time steps is
  one matmul ``[S*B, F] @ [F, 3H]`` before the scan; the scan does one ``[B, H] @ [H, 3H]``
  per step and saves the gates;
- backward: a reverse scan carries only ``dh`` (one ``[B, 3H] @ [3H, H]`` per step and the
  gate algebra); the gradients of ``w_h``, ``b_h``, ``w_x``, ``b_x`` and ``x`` are formed
  after it as single contractions over all ``S * B`` rows, instead of the ``S``
  accumulating ``[H, B] @ [B, 3H]`` products that autodiff of a scan produces. ``last_only``
  starts that scan from the last state's cotangent, with no per-step cotangents to add.

The backward is written in ordinary differentiable JAX ops, so the function has
derivatives of every order in reverse mode (MAML's second-order meta-gradient
differentiates through the inner gradient, i.e. through this backward). Forward mode
(``jax.jvp``) is not supported, as for any ``jax.custom_vjp``.

With ``remat_steps`` (the default) the body of both scans is a ``jax.checkpoint`` that saves
only its matmul outputs (``dots_saveable``). It matters when the forward or backward is
itself differentiated (second order): autodiff of each scan then keeps the step's products
and recomputes its gate arithmetic, instead of stacking every elementwise intermediate of
every step as a residual. Same math; XLA may round the recomputed gates differently
(parameters after five meta-steps within 3e-8 at RMLDP's CPU size, bit-identical at the
benchmark's shape). The second-order MAML step on the benchmark shape runs 1.06-1.13x
faster (``maml_throughput.py``, ``engine_keep``; ``experiments/results/profiling.md``).
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


def _gates(hidden: int, xp: Array, hp: Array):
    """Gates (r, z, n) from projected input xp and hidden product hp ([..., 3H] each)."""
    r = jax.nn.sigmoid(xp[..., :hidden] + hp[..., :hidden])
    z = jax.nn.sigmoid(xp[..., hidden : 2 * hidden] + hp[..., hidden : 2 * hidden])
    n = jnp.tanh(xp[..., 2 * hidden :] + r * hp[..., 2 * hidden :])
    return r, z, n


def _checkpointed(step, remat_steps: bool):
    """``step`` saving only its matmul outputs for a later differentiation, or as it is."""
    if not remat_steps:
        return step
    return jax.checkpoint(step, policy=jax.checkpoint_policies.dots_saveable)


def _forward(options, w_x, b_x, w_h, b_h, x, h0):
    """x f32[B, S, F] -> hs f32[S, B, H] (time first) and the gates of every step."""
    dtype, remat_steps = options
    hidden = w_h.shape[0]
    xs = _mm("sbf,fg->sbg", jnp.swapaxes(x, 0, 1), w_x, dtype) + b_x

    def step(h, xp):
        hp = _mm("bh,hg->bg", h, w_h, dtype) + b_h
        r, z, n = _gates(hidden, xp, hp)
        h_new = (1.0 - z) * n + z * h
        return h_new, (h_new, r, z, n, hp[..., 2 * hidden :])

    _, (hs, r, z, n, hpn) = jax.lax.scan(_checkpointed(step, remat_steps), h0, xs)
    return hs, (r, z, n, hpn)


def _backward(options, res, g_last, g_seq):
    """Gradients from the cotangent of the last state g_last f32[B, H] and of every state
    g_seq f32[S, B, H] (time first) or None."""
    dtype, remat_steps = options
    w_x, w_h, x, h0, hs, r, z, n, hpn = res
    hidden = w_h.shape[0]
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # [S, B, H]
    w_h_t = w_h.T

    def step(dh, inputs):
        if g_seq is not None:
            inputs, g_t = inputs[:-1], inputs[-1]
            dh = dh + g_t
        r_t, z_t, n_t, hpn_t, hprev_t = inputs
        dan = dh * (1.0 - z_t) * (1.0 - n_t * n_t)
        dar = dan * hpn_t * r_t * (1.0 - r_t)
        daz = dh * (hprev_t - n_t) * z_t * (1.0 - z_t)
        dhp = jnp.concatenate([dar, daz, dan * r_t], axis=-1)
        return dh * z_t + _mm("bg,gh->bh", dhp, w_h_t, dtype), (dhp, dan)

    xs_scan = (r, z, n, hpn, h_prev) + (() if g_seq is None else (g_seq,))
    step = _checkpointed(step, remat_steps)
    dh0, (dhp, dan) = jax.lax.scan(step, g_last, xs_scan, reverse=True)
    dxs = jnp.concatenate([dhp[..., : 2 * hidden], dan], axis=-1)  # [S, B, 3H]
    d_w_h = _mm("sbh,sbg->hg", h_prev, dhp, dtype)
    d_b_h = jnp.sum(dhp, axis=(0, 1))
    d_w_x = _mm("sbf,sbg->fg", jnp.swapaxes(x, 0, 1), dxs, dtype)
    d_b_x = jnp.sum(dxs, axis=(0, 1))
    d_x = jnp.swapaxes(_mm("sbg,fg->sbf", dxs, w_x, dtype), 0, 1)
    return d_w_x, d_b_x, d_w_h, d_b_h, d_x, dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru_sequence(options, w_x, b_x, w_h, b_h, x, h0):
    return jnp.swapaxes(_forward(options, w_x, b_x, w_h, b_h, x, h0)[0], 0, 1)


def _sequence_fwd(options, w_x, b_x, w_h, b_h, x, h0):
    hs, gates = _forward(options, w_x, b_x, w_h, b_h, x, h0)
    return jnp.swapaxes(hs, 0, 1), (w_x, w_h, x, h0, hs, *gates)


def _sequence_bwd(options, res, g):
    return _backward(options, res, jnp.zeros_like(res[3]), jnp.swapaxes(g, 0, 1))


_gru_sequence.defvjp(_sequence_fwd, _sequence_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru_last(options, w_x, b_x, w_h, b_h, x, h0):
    return _forward(options, w_x, b_x, w_h, b_h, x, h0)[0][-1]


def _last_fwd(options, w_x, b_x, w_h, b_h, x, h0):
    hs, gates = _forward(options, w_x, b_x, w_h, b_h, x, h0)
    return hs[-1], (w_x, w_h, x, h0, hs, *gates)


def _last_bwd(options, res, g):
    return _backward(options, res, g, None)


_gru_last.defvjp(_last_fwd, _last_bwd)


def gru_sequence(
    w_x: Array,
    b_x: Array,
    w_h: Array,
    b_h: Array,
    x: Array,
    h0: Array,
    *,
    last_only: bool = False,
    matmul_dtype=None,
    remat_steps: bool = True,
) -> Array:
    """Hidden states of a GRU: x f32[..., S, F], h0 f32[..., H] -> hs f32[..., S, H], or with
    ``last_only`` the last state f32[..., H] (its backward then starts from that state's
    cotangent alone, with no per-step cotangents to add).

    Weights: w_x [F, 3H], b_x [3H], w_h [H, 3H], b_h [3H] (gates reset, update, new).
    ``matmul_dtype`` (e.g. ``jnp.bfloat16``): every matmul of the forward and backward takes
    its operands in that dtype and accumulates in the inputs' dtype; gates stay f32.
    Experimental: jaxlib 0.10.2 on CPU compiles the MAML meta-step with bf16 but fails at run
    time (``DotThunk``: BF16 x BF16 = F32 unsupported for some of its dots).
    ``remat_steps``: checkpoint each scan step for second-order use (module doc); False
    stacks every intermediate, as before (the benchmark's ``engine_keep`` variant).
    """
    batch = x.shape[:-2]
    s, f = x.shape[-2:]
    x2 = x.reshape((-1, s, f))
    h2 = jnp.broadcast_to(h0, batch + h0.shape[-1:]).reshape((-1, h0.shape[-1]))
    core = _gru_last if last_only else _gru_sequence
    out = core((matmul_dtype, remat_steps), w_x, b_x, w_h, b_h, x2, h2)
    return out.reshape(batch + out.shape[1:])
