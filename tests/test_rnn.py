"""``dmeta.nn.rnn``: short sequences unrolled compute what the loop computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dmeta.nn.rnn as rnn


@pytest.mark.parametrize("layer", ["lstm", "gru"])
def test_unrolled_short_sequence_equals_loop(monkeypatch, layer):
    make = {"lstm": rnn.LSTM, "gru": lambda f, h, rngs: rnn.GRU(f, h, impl="scan", rngs=rngs)}
    graphdef, params = nnx.split(make[layer](3, 8, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (5, rnn.UNROLL_MAX_STEPS, 3))

    def loss(params):
        h, hs = nnx.merge(graphdef, params)(x, return_sequence=True)
        return jnp.sum(jnp.sin(h)) + jnp.sum(jnp.square(hs))

    unrolled = jax.jit(jax.value_and_grad(loss))
    # the unrolled scan lowers to no while loop; with the limit at 0 it lowers to one
    assert "while" not in jax.jit(loss).lower(params).as_text()
    want = unrolled(params)
    monkeypatch.setattr(rnn, "UNROLL_MAX_STEPS", 0)
    jax.clear_caches()  # the limit is read at trace time
    assert "while" in jax.jit(loss).lower(params).as_text()
    got = jax.jit(jax.value_and_grad(loss))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
