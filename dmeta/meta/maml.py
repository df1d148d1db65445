"""MAML, first-order MAML and Meta-SGD task losses over any ``loss_fn(params, split)``.

Meta-parameters are a dict: ``{"theta": params}`` for MAML / FOMAML and
``{"theta": params, "alpha": step sizes like params}`` for Meta-SGD.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dmeta.meta.inner import LossFn, adapt, adapt_with_support_loss
from dmeta.types import Array, Key, Params, TaskBatch


def init_meta_params(theta: Params, *, meta_sgd: bool = False, step_size: float = 1e-2) -> Params:
    """Meta-parameters: MAML ``{"theta"}``, Meta-SGD ``{"theta", "alpha"}`` (alpha = step_size)."""
    if not meta_sgd:
        return {"theta": theta}
    return {"theta": theta, "alpha": jax.tree.map(lambda p: jnp.full_like(p, step_size), theta)}


def inner_step_size(meta_params: Params, step_size: float) -> float | Params:
    """Learned per-parameter step sizes when present (Meta-SGD), else the fixed ``step_size``."""
    return meta_params.get("alpha", step_size)


def make_maml_task_loss(
    loss_fn: LossFn,
    *,
    steps: int = 1,
    step_size: float = 1e-2,
    first_order: bool = False,
    remat: bool = False,
    init_fn: Callable[[Params, TaskBatch, Key], tuple[Params, dict[str, Array]]] | None = None,
    max_grad_norm: float | Array | None = None,
) -> Callable[[Params, TaskBatch, Key], tuple[Array, dict[str, Array]]]:
    """Builds ``task_loss(meta_params, task, key) -> (query loss, aux)`` for one task.

    Args:
      loss_fn: ``loss_fn(params, split) -> f32[]`` (e.g. MPFN masked MSE).
      steps: inner gradient steps.
      step_size: inner step size alpha (ignored when meta_params has ``alpha``).
      first_order: FOMAML.
      remat: checkpoint each inner step.
      init_fn: optional ``init_fn(meta_params, task, key) -> (theta_0i, aux)`` giving a
        task-specific initialization (RMLDP's modulated theta_0i) and extra loss terms;
        any aux entry named ``"extra_loss"`` is added to the objective.
      max_grad_norm: clip each inner gradient to this global norm (None: no clipping).

    Returns:
      The task loss; aux holds ``query_loss`` and ``support_loss`` (before adaptation).
    """

    def task_loss(meta_params: Params, task: TaskBatch, key: Key):
        if init_fn is None:
            theta_i, aux = meta_params["theta"], {}
        else:
            theta_i, aux = init_fn(meta_params, task, key)
        adapted, support_loss = adapt_with_support_loss(
            loss_fn,
            theta_i,
            task.support,
            steps=steps,
            step_size=inner_step_size(meta_params, step_size),
            first_order=first_order,
            remat=remat,
            max_grad_norm=max_grad_norm,
        )
        query_loss = loss_fn(adapted, task.query)
        aux = dict(aux, query_loss=query_loss, support_loss=support_loss)
        return query_loss + aux.get("extra_loss", 0.0), aux

    return task_loss


def adapt_tasks(
    loss_fn: LossFn,
    meta_params: Params,
    tasks: TaskBatch,
    *,
    steps: int = 1,
    step_size: float = 1e-2,
    init_fn: Callable[[Params, TaskBatch, Key], tuple[Params, dict[str, Array]]] | None = None,
    key: Key | None = None,
    max_grad_norm: float | Array | None = None,
) -> Params:
    """Meta-testing (eq. 8): adapted parameters for every task, leaves f32[T, ...]
    (``max_grad_norm`` clips each inner gradient as in ``make_maml_task_loss``)."""
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, jax.tree.leaves(tasks)[0].shape[0])

    def one(task, k):
        theta_i = meta_params["theta"] if init_fn is None else init_fn(meta_params, task, k)[0]
        return adapt(
            loss_fn,
            theta_i,
            task.support,
            steps=steps,
            step_size=inner_step_size(meta_params, step_size),
            first_order=True,
            max_grad_norm=max_grad_norm,
        )

    return jax.vmap(one)(tasks, keys)


def task_params_predict(
    apply: Callable[..., Array], task_params: Params, x_local, x_season
) -> Array:
    """Predictions with per-task parameters: leaves [T, ...], x f32[T, N, S, F] -> f32[T, N]."""
    return jax.vmap(apply)(task_params, x_local, x_season)
