"""Fine-tuning baseline: pretrain one model on all source tasks, then adapt per target task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dmeta.meta.inner import LossFn
from dmeta.meta.steps import TrainStep
from dmeta.train.state import TrainState
from dmeta.types import Key, TaskBatch


def make_pretrain_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> TrainStep:
    """Plain supervised step on the pooled support and query sets of a task batch.

    Args:
      loss_fn: ``loss_fn(params, split) -> f32[]`` for one task's split.
      optimizer: optax transformation.

    Returns:
      ``train_step(state, batch: TaskBatch, key) -> (state, metrics)`` (not jitted).
    """

    def objective(params, batch: TaskBatch):
        per_task = jax.vmap(lambda s, q: loss_fn(params, s) + loss_fn(params, q))
        return 0.5 * jnp.mean(per_task(batch.support, batch.query))

    def train_step(state: TrainState, batch: TaskBatch, key: Key):
        del key
        loss, grads = jax.value_and_grad(objective)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.key), {"loss": loss}

    return train_step
