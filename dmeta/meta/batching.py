"""Mean of a per-task loss over a batch of tasks, by ``vmap`` or ``lax.map``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from dmeta.types import Array, Key, Params

Strategy = Literal["vmap", "map", "map_remat"]
TaskLoss = Callable[[Params, Any, Key], tuple[Array, dict[str, Array]]]


def per_task(
    task_loss: TaskLoss,
    meta_params: Params,
    tasks: Any,
    key: Key,
    *,
    strategy: Strategy = "vmap",
    map_batch_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Evaluates ``task_loss`` on every task of a batch.

    Args:
      task_loss: ``task_loss(meta_params, task, key) -> (loss f32[], aux dict of f32[])``.
      meta_params: shared meta-parameters, broadcast to all tasks.
      tasks: pytree whose leaves have a leading task axis T.
      key: PRNG key, split into one key per task.
      strategy: ``"vmap"`` batches tasks into one computation; ``"map"`` runs them
        sequentially with ``lax.map`` (less memory; on CPU sometimes faster), which still
        keeps every task's residuals for the backward pass; ``"map_remat"`` maps a
        ``jax.checkpoint``-ed task loss, so the backward pass recomputes one task at a time
        and memory no longer grows with the residuals of every task (same gradients).
      map_batch_size: with ``"map"``, vmap this many tasks per map iteration.

    Returns:
      losses f32[T] and aux dict of f32[T] arrays.
    """
    n_tasks = jax.tree.leaves(tasks)[0].shape[0]
    keys = jax.random.split(key, n_tasks)
    if strategy == "vmap":
        return jax.vmap(task_loss, in_axes=(None, 0, 0))(meta_params, tasks, keys)
    if strategy in ("map", "map_remat"):
        loss = jax.checkpoint(task_loss) if strategy == "map_remat" else task_loss
        return jax.lax.map(
            lambda tk: loss(meta_params, tk[0], tk[1]),
            (tasks, keys),
            batch_size=map_batch_size,
        )
    raise ValueError(f"unknown strategy {strategy!r}; use 'vmap', 'map' or 'map_remat'")


def mean_over_tasks(
    task_loss: TaskLoss,
    meta_params: Params,
    tasks: Any,
    key: Key,
    **kwargs: Any,
) -> tuple[Array, dict[str, Array]]:
    """Meta-objective: mean task loss and mean of each aux metric (``per_task`` kwargs)."""
    losses, aux = per_task(task_loss, meta_params, tasks, key, **kwargs)
    return jnp.mean(losses), jax.tree.map(jnp.mean, aux)
