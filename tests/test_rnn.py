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
    x = jax.random.normal(jax.random.key(1), (5, 3, 3))  # 3 steps <= UNROLL_MAX_STEPS

    def value_and_grad():  # a new function each call: traced again with the limit of the time
        def loss(params):
            h, hs = nnx.merge(graphdef, params)(x, return_sequence=True)
            return jnp.sum(jnp.sin(h)) + jnp.sum(jnp.square(hs))

        lowered = jax.jit(jax.value_and_grad(loss)).lower(params)
        return "while" in lowered.as_text(), lowered.compile()(params)

    looped, want = value_and_grad()
    assert not looped
    monkeypatch.setattr(rnn, "UNROLL_MAX_STEPS", 0)
    looped, got = value_and_grad()
    assert looped
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
