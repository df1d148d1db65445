"""Fused GRU (custom VJP, weight gradients over all steps) against the plain scan GRU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from dmeta.meta.maml import make_maml_task_loss
from dmeta.models.mpfn import MPFN, split_loss
from dmeta.nn.functional import split_params
from dmeta.nn.fused_gru import gru_sequence
from dmeta.nn.rnn import GRU
from dmeta.types import Split

F, H, S, B = 3, 4, 5, 2


def gru_pair(dtype):
    """(apply_scan, apply_fused, params) for GRUs with the same weights."""
    apply_scan, params = split_params(GRU(F, H, rngs=nnx.Rngs(0)))
    apply_fused, _ = split_params(GRU(F, H, impl="fused", rngs=nnx.Rngs(0)))
    # nonzero biases so every gradient term is exercised
    params = jax.tree.map(lambda a: a.astype(dtype) + 0.1, params)
    return apply_scan, apply_fused, params


def seq_loss(apply):
    def loss(params, x, h0):
        h, hs = apply(params, x, h0, return_sequence=True)
        return jnp.sum(jnp.sin(h)) + jnp.sum(hs**2)

    return loss


def test_forward_matches_scan_f32():
    apply_scan, apply_fused, params = gru_pair(jnp.float32)
    x = jax.random.normal(jax.random.key(1), (3, B, S, F))
    for h0 in (None, jax.random.normal(jax.random.key(2), (3, B, H))):
        hs_s = apply_scan(params, x, h0, return_sequence=True)
        hs_f = apply_fused(params, x, h0, return_sequence=True)
        for a, b in zip(hs_s, hs_f):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_gradients_match_scan_and_second_order_f64():
    with jax.enable_x64(True):
        apply_scan, apply_fused, params = gru_pair(jnp.float64)
        x = jax.random.normal(jax.random.key(1), (B, S, F), jnp.float64)
        h0 = jax.random.normal(jax.random.key(2), (B, H), jnp.float64)
        gs = jax.grad(seq_loss(apply_scan), argnums=(0, 1, 2))(params, x, h0)
        gf = jax.grad(seq_loss(apply_fused), argnums=(0, 1, 2))(params, x, h0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), gs, gf)
        check_grads(jax.jit(seq_loss(apply_fused)), (params, x, h0), order=2, modes=["rev"])


def test_last_state_gradients_match_scan_and_second_order_f64():
    """``last_only`` (the path without ``return_sequence``) starts its backward from the last
    state's cotangent alone."""
    with jax.enable_x64(True):
        apply_scan, apply_fused, params = gru_pair(jnp.float64)
        x = jax.random.normal(jax.random.key(5), (B, S, F), jnp.float64)
        h0 = jax.random.normal(jax.random.key(6), (B, H), jnp.float64)

        def last_loss(apply):
            return lambda p, xx, hh: jnp.sum(jnp.sin(apply(p, xx, hh)))

        gs = jax.grad(last_loss(apply_scan), argnums=(0, 1, 2))(params, x, h0)
        gf = jax.grad(last_loss(apply_fused), argnums=(0, 1, 2))(params, x, h0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), gs, gf)
        check_grads(jax.jit(last_loss(apply_fused)), (params, x, h0), order=2, modes=["rev"])


def test_maml_meta_gradient_matches_scan_f64():
    """Second order through the inner gradient (the custom backward is differentiated)."""
    with jax.enable_x64(True):
        grads = {}
        for impl in ("scan", "fused"):
            apply, theta = split_params(MPFN(F, H, gru_impl=impl, rngs=nnx.Rngs(0)))
            theta = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.05, theta)
            k = jax.random.split(jax.random.key(3), 6)
            task = type("Task", (), {})()
            task.support = Split(
                jax.random.normal(k[0], (B, S, F), jnp.float64),
                jax.random.normal(k[1], (B, S, F), jnp.float64),
                jax.random.normal(k[2], (B,), jnp.float64),
                jnp.ones((B,), jnp.float64),
            )
            task.query = Split(
                jax.random.normal(k[3], (B, S, F), jnp.float64),
                jax.random.normal(k[4], (B, S, F), jnp.float64),
                jax.random.normal(k[5], (B,), jnp.float64),
                jnp.ones((B,), jnp.float64),
            )
            task_loss = make_maml_task_loss(
                functools.partial(split_loss, apply), steps=2, step_size=0.3
            )
            fn = lambda th, tl=task_loss, t=task: tl({"theta": th}, t, jax.random.key(0))[0]
            fn = jax.jit(fn)
            grads[impl] = jax.grad(fn)(theta)
            if impl == "fused":
                check_grads(fn, (theta,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
            grads["scan"],
            grads["fused"],
        )


def test_vmapped_per_task_weights_match_scan():
    """Per-task weights under vmap (MAML's query pass) give the scan GRU's values and grads."""
    apply_scan, apply_fused, params = gru_pair(jnp.float32)
    tasks = jax.tree.map(lambda a: a + 0.01 * jnp.arange(4.0).reshape((4,) + (1,) * a.ndim), params)
    x = jax.random.normal(jax.random.key(4), (4, B, S, F))

    def total(apply):
        return lambda p: jnp.sum(jax.vmap(lambda q, xi: apply(q, xi))(p, x) ** 2)

    np.testing.assert_allclose(total(apply_scan)(tasks), total(apply_fused)(tasks), rtol=1e-5)
    gs, gf = jax.grad(total(apply_scan))(tasks), jax.grad(total(apply_fused))(tasks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gs, gf)


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl"):
        GRU(F, H, impl="cudnn", rngs=nnx.Rngs(0))


def test_step_checkpoints_keep_second_order_values_f64():
    """``remat_steps`` (the default) changes what a second differentiation stores, not what
    it computes: the gradient of a gradient equals the one without step checkpoints."""
    with jax.enable_x64(True):
        _, _, params = gru_pair(jnp.float64)
        weights = (params["w_x"], params["b_x"], params["w_h"], params["b_h"])
        x = jax.random.normal(jax.random.key(7), (B, S, F), jnp.float64)
        h0 = jax.random.normal(jax.random.key(8), (B, H), jnp.float64)

        def hessian_vector(remat_steps):
            def loss(w):
                return jnp.sum(jnp.sin(gru_sequence(*w, x, h0, remat_steps=remat_steps)))

            inner = lambda w: jnp.sum(jax.tree.map(lambda g: jnp.sum(g**2), jax.grad(loss)(w))[2])
            return jax.jit(jax.grad(inner))(weights)

        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
            hessian_vector(True),
            hessian_vector(False),
        )


def test_benchmark_keep_variant_is_the_engine_mpfn():
    """``maml_throughput``'s ``engine_keep`` MPFN (scans without step checkpoints) gives the
    engine's predictions and second-order meta-gradient."""
    from experiments.benchmarks import maml_throughput as bench

    shape = bench.QUICK
    apply, theta = split_params(MPFN(shape.features, shape.hidden, rngs=nnx.Rngs(0)))
    batch = bench.make_batch(shape, 1)
    x_local, x_season = batch.support.x_local[0], batch.support.x_season[0]
    np.testing.assert_allclose(
        bench.mpfn_keep(theta, x_local, x_season), apply(theta, x_local, x_season), rtol=1e-6
    )
    grads = {}
    for gru in ("engine", "engine_keep"):
        task_loss = make_maml_task_loss(
            bench.loss_for(gru, bench.engine_apply(gru, shape, 0)), steps=1, step_size=0.1
        )
        task = jax.tree.map(lambda a: a[0], batch)
        fn = lambda th, tl=task_loss: tl({"theta": th}, task, jax.random.key(0))[0]
        grads[gru] = jax.jit(jax.grad(fn))(theta)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        grads["engine"],
        grads["engine_keep"],
    )
