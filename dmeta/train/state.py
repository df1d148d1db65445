"""The train state every jitted step threads: parameters, optimizer state, step, key."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from dmeta.types import Array, Key, Params


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      params: pytree of trainable parameters (``theta`` for meta-learners).
      opt_state: optax state for ``params``.
      step: i32[] number of optimizer updates applied so far.
      key: PRNG key used for the next step (sampling, dropout, latents).
    """

    params: Params
    opt_state: optax.OptState
    step: Array
    key: Key


def init_train_state(
    params: Params, optimizer: optax.GradientTransformation, key: Key
) -> TrainState:
    """Builds the state at step 0."""
    return TrainState(
        params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), key=key
    )
