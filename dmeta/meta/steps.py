"""Jitted outer-loop steps: ``(state, batch, key) -> (state, metrics)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from dmeta.meta.batching import Strategy, TaskLoss, mean_over_tasks
from dmeta.train.state import TrainState
from dmeta.types import Array, Key

TrainStep = Callable[[TrainState, Any, Key], tuple[TrainState, dict[str, Array]]]


def make_meta_train_step(
    task_loss: TaskLoss,
    optimizer: optax.GradientTransformation,
    *,
    strategy: Strategy = "vmap",
    map_batch_size: int | None = None,
) -> TrainStep:
    """Outer-loop update (eq. 7 / 13): gradient of the mean task loss through the inner loop.

    Args:
      task_loss: ``task_loss(meta_params, task, key) -> (loss, aux)``, e.g. from
        ``make_maml_task_loss``.
      optimizer: optax transformation for the meta-parameters (beta in the paper).
      strategy: ``"vmap"`` or ``"map"`` across the tasks of a batch.
      map_batch_size: tasks vmapped per ``lax.map`` iteration.

    Returns:
      An un-jitted ``train_step(state, batch, key) -> (state, metrics)``; wrap it in
      ``jax.jit`` (``donate_argnums=0`` to update in place).
    """

    def objective(meta_params, batch, key):
        return mean_over_tasks(
            task_loss, meta_params, batch, key, strategy=strategy, map_batch_size=map_batch_size
        )

    def train_step(state: TrainState, batch: Any, key: Key):
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(params, opt_state, state.step + 1, state.key), metrics

    return train_step


def with_sampler(train_step: TrainStep, sample_fn: Callable[[Key], Any]) -> Callable:
    """Folds batch sampling into the step so a run is a pure function of its state.

    Args:
      train_step: ``(state, batch, key, *args) -> (state, metrics)``.
      sample_fn: ``sample_fn(key) -> batch`` (e.g. the seeded task sampler).

    Returns:
      ``step(state, *args) -> (state, metrics)``: splits ``state.key`` into the next state
      key, a sampling key and a step key. Checkpointing the state checkpoints the sampler.
    """

    def step(state: TrainState, *args: Any):
        next_key, k_batch, k_step = jax.random.split(state.key, 3)
        state = TrainState(state.params, state.opt_state, state.step, next_key)
        return train_step(state, sample_fn(k_batch), k_step, *args)

    return step


def with_host_sampler(train_step: TrainStep, sample_fn: Callable[[Key], Any]) -> Callable:
    """``with_sampler`` for a ``sample_fn`` that runs outside ``jit`` (host code, e.g. each
    process drawing its part of a global batch, ``dmeta.distributed.global_batch``).

    ``train_step`` is jitted by the caller; the step cannot be traced, so it carries
    ``step.metric_shapes(state, *args)``, the metrics' structure traced on one batch drawn
    with ``state.key`` (what ``dmeta.train.loop.fit`` asks a step for).
    """
    step = with_sampler(train_step, sample_fn)

    def metric_shapes(state: TrainState, *args: Any):
        return jax.eval_shape(train_step, state, sample_fn(state.key), state.key, *args)[1]

    step.metric_shapes = metric_shapes
    return step
