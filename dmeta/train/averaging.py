"""Parameter averaging: an exponential moving average of the iterates, kept in the optimizer.

``param_average(decay)`` is the last link of an ``optax.chain``: it leaves the updates
as they are and folds the updated parameters into a running average (Polyak-Ruppert
averaging with exponential weights). Evaluating ``averaged_params(state)`` instead of
``state.params`` removes most of the step-to-step noise of the iterate, so early stopping
follows the model rather than the last minibatches. The decay may be a traced value
(``optax.inject_hyperparams``): decay 0 makes the average the parameters themselves.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dmeta.train.state import TrainState
from dmeta.types import Array, Params


class ParamAverageState(NamedTuple):
    """``average``: decay-weighted sum of the iterates (pytree like the params);
    ``weight``: f32[] its total weight, 1 - decay^t, which debiases it."""

    average: Params
    weight: Array


def param_average(decay: float | Array) -> optax.GradientTransformation:
    """Updates unchanged; the state tracks an EMA of the parameters after each update."""

    def init(params: Params) -> ParamAverageState:
        return ParamAverageState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))

    def update(updates, state: ParamAverageState, params: Params | None = None):
        if params is None:
            raise ValueError("param_average needs the params (pass them to update)")
        new = optax.apply_updates(params, updates)
        average = jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, state.average, new)
        return updates, ParamAverageState(average, decay * state.weight + (1.0 - decay))

    return optax.GradientTransformation(init, update)


def averaged_params(state: TrainState) -> Params:
    """The debiased average of ``state``'s optimizer (``state.params`` when it has none or
    before the first update)."""
    found = optax.tree_utils.tree_get(state.opt_state, "ParamAverageState")
    if found is None or float(found.weight) == 0.0:
        return state.params
    return jax.tree.map(lambda a: a / found.weight.astype(a.dtype), found.average)
