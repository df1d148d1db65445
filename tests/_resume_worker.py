"""A tiny seeded regression run for the resume tests; run as a script it trains slowly.

``python tests/_resume_worker.py CKPT_DIR LOG_PATH N_STEPS KEY_KIND`` trains with a
checkpoint every 5 steps, sleeping 0.1 s per step so the test can SIGKILL it mid-run.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import optax

from dmeta.meta.steps import with_sampler
from dmeta.train.loop import fit
from dmeta.train.state import TrainState, init_train_state

W_TRUE = jnp.array([1.0, -2.0, 0.5])


def sample(key):
    """A batch ``(x: f32[8, 3], y: f32[8])`` of noisy linear regression."""
    k_x, k_e = jax.random.split(key)
    x = jax.random.normal(k_x, (8, 3))
    return x, x @ W_TRUE + 0.5 * jax.random.normal(k_e, (8,))


def _loss(params, x, y):
    return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def make_problem(key_kind: str = "typed", lr: float = 0.05):
    """Returns ``(jitted step_fn, initial state, eval_fn)``; ``key_kind``: typed or raw."""
    optimizer = optax.adam(lr)

    def train_step(state, batch, key):
        del key
        loss, grads = jax.value_and_grad(_loss)(state.params, *batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.key), {"loss": loss}

    key = jax.random.key(0) if key_kind == "typed" else jax.random.PRNGKey(0)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    state = init_train_state(params, optimizer, key)
    x_val, y_val = sample(jax.random.key(123))

    @jax.jit
    def eval_fn(state):
        return {"val_loss": _loss(state.params, x_val, y_val)}

    return jax.jit(with_sampler(train_step, sample)), state, eval_fn


def slow(step_fn, seconds: float):
    """Wraps ``step_fn`` to sleep before each concrete (non-traced) call."""

    def step(state):
        if not isinstance(state.step, jax.core.Tracer):
            time.sleep(seconds)
        return step_fn(state)

    return step


if __name__ == "__main__":
    ckpt_dir, log_path, n_steps, key_kind = sys.argv[1:]
    step_fn, state, eval_fn = make_problem(key_kind)
    fit(
        slow(step_fn, 0.1),
        state,
        n_steps=int(n_steps),
        eval_fn=eval_fn,
        eval_every=4,
        ckpt_dir=ckpt_dir,
        ckpt_every=5,
        log_path=log_path,
        progress=False,
    )
