"""Parameter averaging (dmeta.train.averaging): the debiased EMA, its lookup in a chain, and
that it removes the noise of a noisy iterate."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmeta.stmp.train import adam
from dmeta.train.averaging import averaged_params, param_average
from dmeta.train.state import TrainState, init_train_state


def _run(opt, params, grads_seq):
    state = init_train_state(params, opt, jax.random.key(0))
    for g in grads_seq:
        updates, opt_state = opt.update(g, state.opt_state, state.params)
        state = TrainState(optax.apply_updates(state.params, updates), opt_state,
                           state.step + 1, state.key)  # fmt: skip
    return state


def test_debiased_average_of_the_iterates():
    decay = 0.5
    opt = optax.chain(optax.sgd(1.0), param_average(decay))
    grads = [{"w": jnp.array([g])} for g in (1.0, -2.0, 0.5)]
    state = _run(opt, {"w": jnp.array([0.0])}, grads)
    iterates = np.cumsum([-1.0, 2.0, -0.5])  # the params after each update: -1, 1, 0.5
    weights = decay ** np.arange(3)[::-1] * (1 - decay)
    expected = np.sum(weights * iterates) / np.sum(weights)
    np.testing.assert_allclose(averaged_params(state)["w"], [expected], rtol=1e-6)
    np.testing.assert_allclose(state.params["w"], [0.5])


def test_decay_zero_and_no_update_give_the_params():
    params = {"w": jnp.arange(3.0)}
    fresh = init_train_state(params, adam(1e-2, 10, ema=0.9), jax.random.key(0))
    assert averaged_params(fresh) is fresh.params  # before any update
    state = _run(adam(1e-2, 10, ema=0.0), params, [{"w": jnp.ones(3)}] * 2)
    np.testing.assert_array_equal(averaged_params(state)["w"], state.params["w"])
    plain = init_train_state(params, optax.sgd(0.1), jax.random.key(0))
    assert averaged_params(plain) is plain.params  # no averaging in the chain


def test_average_is_closer_to_the_optimum_than_a_noisy_iterate():
    """SGD on |w|^2 / 2 with gradient noise: the EMA (decay 0.99) sits nearer 0 than the
    iterate, whose stationary spread is set by the noise (a plain copy would not)."""
    rng = np.random.default_rng(0)
    opt = optax.chain(optax.sgd(0.1), param_average(0.99))
    state = init_train_state({"w": jnp.ones(16)}, opt, jax.random.key(0))
    for _ in range(1000):
        g = {"w": state.params["w"] + jnp.asarray(rng.normal(size=16), jnp.float32)}
        updates, opt_state = opt.update(g, state.opt_state, state.params)
        state = TrainState(optax.apply_updates(state.params, updates), opt_state,
                           state.step + 1, state.key)  # fmt: skip
    err_iterate = float(jnp.linalg.norm(state.params["w"]))
    err_average = float(jnp.linalg.norm(averaged_params(state)["w"]))
    assert err_average < 0.5 * err_iterate, (err_average, err_iterate)
