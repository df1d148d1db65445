"""The outer training loop: steps, periodic evaluation, early stopping, logs, resumable checkpoints.

A run is a pure function of its ``TrainState`` (sampling is folded into the step with
``dmeta.meta.steps.with_sampler``, so ``state.key`` carries the sampler), which makes
resuming exact: a run killed at any point and restarted with the same ``ckpt_dir``
ends with bit-identical parameters, best state and log rows. Both typed keys
(``jax.random.key``) and raw ``uint32[2]`` keys (``jax.random.PRNGKey``) are
checkpointed as they are.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dmeta.train.checkpoint import Checkpointer
from dmeta.train.logs import MetricsLog, Row, scalar_metrics
from dmeta.train.state import TrainState
from dmeta.types import Array

StepFn = Callable[[TrainState], tuple[TrainState, Mapping[str, Array]]]
EvalFn = Callable[[TrainState], Mapping[str, Any]]

VAL_KEY = "val_loss"


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns.

    Attributes:
      state: the state after the last step run.
      best_state: the state with the lowest ``val_loss`` seen (the last state when
        ``eval_fn`` gives no ``val_loss``).
      best_step: its step.
      history: the log rows (``step``, mean train metrics since the previous row,
        eval metrics), including rows restored from ``log_path`` on resume.
    """

    state: TrainState
    best_state: TrainState
    best_step: int
    history: list[Row]


@jax.jit
def _accumulate(acc: dict[str, Any], metrics: Mapping[str, Array]) -> dict[str, Any]:
    return {"sum": jax.tree.map(jnp.add, acc["sum"], dict(metrics)), "count": acc["count"] + 1}


def _copy(tree: Any) -> Any:
    # A fresh buffer per leaf: the caller's step may donate `state`, which would delete
    # the buffers that `best_state` shares with it.
    return jax.tree.map(lambda x: x.copy(), tree)


def fit(
    step_fn: StepFn,
    state: TrainState,
    *,
    n_steps: int,
    eval_fn: EvalFn | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    ckpt_every: int | None = None,
    log_path: str | os.PathLike | None = None,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Runs ``step_fn`` until ``state.step == n_steps`` or early stopping.

    Every ``eval_every`` steps and at the last step a row is logged: ``step``, the mean
    of each train metric over the steps since the previous row, and ``eval_fn(state)``.
    A ``val_loss`` lower than the best so far records ``best_state``; after ``patience``
    evaluations in a row without improvement (NaN never improves) the run stops.

    With ``ckpt_dir``, a checkpoint of the state, best state, early-stopping counters and
    the running train-metric sums is saved every ``ckpt_every`` steps and when the run
    ends (only then when ``ckpt_every`` is None); if ``ckpt_dir`` already holds one, the
    run restores the latest and continues from it, and ``log_path`` is truncated to that
    step. Nothing is saved on an exception: a crashed run resumes from its last periodic
    checkpoint and redoes the steps since.

    Args:
      step_fn: ``step_fn(state) -> (state, metrics)`` of scalar metrics, usually
        ``jax.jit(with_sampler(train_step, sample_fn))``; it may donate ``state``.
      state: the initial state; on resume only its structure, shapes and dtypes are used.
      n_steps: total number of steps (the final ``state.step``), not steps to add.
      eval_fn: ``eval_fn(state) -> {"val_loss": ..., ...}`` of scalars.
      eval_every: steps between log rows and evaluations.
      patience: stop after this many evaluations without a lower ``val_loss``; needs
        ``eval_fn`` returning ``val_loss``. None: never stop early.
      ckpt_dir: checkpoint folder (resumed from when it holds a checkpoint).
      ckpt_every: steps between checkpoints.
      log_path: writes rows to ``log_path`` with suffixes ``.csv`` and ``.jsonl``.
      desc: progress bar label.
      progress: show a tqdm progress bar.

    Returns:
      ``FitResult``.

    Raises:
      ValueError: bad ``eval_every`` / ``ckpt_every`` / ``patience``, or ``patience``
        without a ``val_loss`` from ``eval_fn``.
    """
    if eval_every < 1 or (ckpt_every is not None and ckpt_every < 1):
        raise ValueError(
            f"need eval_every >= 1 and ckpt_every >= 1, got {eval_every}, {ckpt_every}"
        )
    if patience is not None and (patience < 1 or eval_fn is None):
        raise ValueError(f"patience={patience} needs patience >= 1 and an eval_fn")
    metric_shapes = jax.eval_shape(step_fn, state)[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), dict(metric_shapes))
    tree = {
        "state": state,
        "best_state": state,
        "acc": {"sum": zeros, "count": jnp.zeros((), jnp.int32)},
        "early_stop": {
            "best_val": np.asarray(np.inf),
            "best_step": np.asarray(int(state.step)),
            "bad_evals": np.asarray(0),
            "stopped": np.asarray(False),
        },
    }
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    bar = None
    try:
        if ckpt is not None and ckpt.latest_step() is not None:
            tree = ckpt.restore(tree)
        else:
            tree["best_state"] = _copy(state)
        state, best_state, acc = tree["state"], tree["best_state"], tree["acc"]
        es = {k: np.asarray(v).item() for k, v in tree["early_stop"].items()}
        step = int(state.step)
        log = MetricsLog(log_path) if log_path is not None else None
        history = list(log.restart(step)) if log is not None else []

        def save() -> None:
            if ckpt is not None:
                early_stop = {k: np.asarray(v) for k, v in es.items()}
                saved = {
                    "state": state,
                    "best_state": best_state,
                    "acc": acc,
                    "early_stop": early_stop,
                }
                ckpt.save(step, saved)

        bar = tqdm(total=n_steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
        while step < n_steps and not es["stopped"]:
            state, metrics = step_fn(state)
            acc = _accumulate(acc, metrics)
            step += 1
            bar.update(1)
            if step % eval_every == 0 or step == n_steps:
                count = int(acc["count"])
                row = {
                    "step": step,
                    **scalar_metrics(jax.tree.map(lambda s: s / count, acc["sum"])),
                }
                acc = jax.tree.map(jnp.zeros_like, acc)
                if eval_fn is not None:
                    row.update(scalar_metrics(eval_fn(state)))
                if VAL_KEY in row:
                    if row[VAL_KEY] < es["best_val"]:
                        es.update(best_val=row[VAL_KEY], best_step=step, bad_evals=0)
                        best_state = _copy(state)
                    else:
                        es["bad_evals"] += 1
                    es["stopped"] = patience is not None and es["bad_evals"] >= patience
                elif patience is not None:
                    raise ValueError(f"patience needs eval_fn to return {VAL_KEY!r}, got {row}")
                history.append(row)
                if log is not None:
                    log.append(row)
                bar.set_postfix({k: v for k, v in row.items() if k != "step"}, refresh=False)
            if (ckpt_every is not None and step % ckpt_every == 0) or step == n_steps:
                save()
        save()  # also at an early stop; a no-op when this step is saved already
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    if math.isinf(es["best_val"]):  # no val_loss seen: the last state is the best
        best_state, es["best_step"] = state, step
    return FitResult(state, best_state, int(es["best_step"]), history)
