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


class NonFiniteError(FloatingPointError):
    """A train metric became NaN or infinite (one line naming the run and the steps)."""


def check_finite(values: Mapping[str, Any] | Array | np.ndarray, where: str) -> None:
    """Stops a run that trains on NaN: raises ``NonFiniteError`` naming ``where`` and the
    first non-finite entry of a loss curve (f[..., n_steps], e.g. what a ``lax.scan``
    training loop returns) or of a dict of metrics (e.g. an epoch's sums)."""
    if isinstance(values, Mapping):
        bad = {k: float(np.max(v)) for k, v in values.items() if not np.all(np.isfinite(v))}
        if bad:
            raise NonFiniteError(f"{where}: metrics {bad} are not finite")
        return
    curve = np.asarray(values)
    bad = np.argwhere(~np.isfinite(curve))
    if len(bad):
        at = ", ".join(f"{name} {i}" for name, i in zip(("row", "step")[-curve.ndim :], bad[0]))
        raise NonFiniteError(
            f"{where}: the loss is not finite from {at} on ({len(bad)} of {curve.size} entries); "
            "lower the learning rate or check the inputs' scale"
        )


def _check_args(eval_every, ckpt_every, patience, eval_fn) -> None:
    if eval_every < 1 or (ckpt_every is not None and ckpt_every < 1):
        raise ValueError(
            f"need eval_every >= 1 and ckpt_every >= 1, got {eval_every}, {ckpt_every}"
        )
    if patience is not None and (patience < 1 or eval_fn is None):
        raise ValueError(f"patience={patience} needs patience >= 1 and an eval_fn")


def _initial_tree(step_fn: StepFn, state: TrainState) -> dict[str, Any]:
    """What a checkpoint holds: states, running metric sums, early-stopping counters."""
    metric_shapes = jax.eval_shape(step_fn, state)[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), dict(metric_shapes))
    return {
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


def _train_row(acc: dict[str, Any], step: int, desc: str) -> Row:
    """The mean train metrics since the last row; raises ``NonFiniteError`` on NaN / inf."""
    count = int(acc["count"])
    row = {"step": step, **scalar_metrics(jax.tree.map(lambda s: s / count, acc["sum"]))}
    bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(
            f"{desc}: train metrics {bad} are not finite in steps {step - count + 1}-{step}; "
            "lower the learning rate or check the inputs' scale"
        )
    return row


def _early_stop(es: dict[str, Any], row: Row, step: int, patience: int | None) -> bool:
    """Updates the counters ``es`` from ``row``; True when ``row`` is the best so far."""
    if VAL_KEY not in row:
        if patience is not None:
            raise ValueError(f"patience needs eval_fn to return {VAL_KEY!r}, got {row}")
        return False
    improved = row[VAL_KEY] < es["best_val"]
    if improved:
        es.update(best_val=row[VAL_KEY], best_step=step, bad_evals=0)
    else:
        es["bad_evals"] += 1
    es["stopped"] = patience is not None and es["bad_evals"] >= patience
    return improved


@dataclasses.dataclass
class _Run:
    """The mutable state of one ``fit`` call between steps."""

    state: TrainState
    best_state: TrainState
    acc: dict[str, Any]
    es: dict[str, Any]
    step: int
    history: list[Row]
    log: MetricsLog | None
    ckpt: Checkpointer | None

    @classmethod
    def start(cls, tree: dict[str, Any], ckpt, log: MetricsLog | None) -> _Run:
        es = {k: np.asarray(v).item() for k, v in tree["early_stop"].items()}
        step = int(tree["state"].step)
        history = list(log.restart(step)) if log is not None else []
        return cls(tree["state"], tree["best_state"], tree["acc"], es, step, history, log, ckpt)

    def log_row(self, eval_fn: EvalFn | None, patience: int | None, desc: str) -> Row:
        """Logs a row (train means, evaluation), updates early stopping and the best state."""
        row = _train_row(self.acc, self.step, desc)
        self.acc = jax.tree.map(jnp.zeros_like, self.acc)
        row.update(scalar_metrics(eval_fn(self.state)) if eval_fn is not None else {})
        if _early_stop(self.es, row, self.step, patience):
            self.best_state = _copy(self.state)
        self.history.append(row)
        if self.log is not None:
            self.log.append(row)
        return row

    def save(self) -> None:
        if self.ckpt is not None:
            early_stop = {k: np.asarray(v) for k, v in self.es.items()}
            saved = dict(
                state=self.state, best_state=self.best_state, acc=self.acc, early_stop=early_stop
            )
            self.ckpt.save(self.step, saved)


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
    of each train metric over the steps since the previous row (a NaN or infinite mean
    stops the run with ``NonFiniteError`` naming the steps), and ``eval_fn(state)``. A
    ``val_loss`` lower than the best so far records ``best_state``; after ``patience``
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
      desc: progress bar label (and the run's name in errors).
      progress: show a tqdm progress bar (with the time left).

    Returns:
      ``FitResult``.

    Raises:
      ValueError: bad ``eval_every`` / ``ckpt_every`` / ``patience``, or ``patience``
        without a ``val_loss`` from ``eval_fn``.
      NonFiniteError: a train metric's mean is NaN or infinite.
    """
    _check_args(eval_every, ckpt_every, patience, eval_fn)
    tree = _initial_tree(step_fn, state)
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    bar = None
    try:
        if ckpt is not None and ckpt.latest_step() is not None:
            tree = ckpt.restore(tree)
        else:
            tree["best_state"] = _copy(state)
        run = _Run.start(tree, ckpt, MetricsLog(log_path) if log_path is not None else None)
        bar = tqdm(
            total=n_steps, initial=run.step, desc=desc, disable=not progress, dynamic_ncols=True
        )
        while run.step < n_steps and not run.es["stopped"]:
            run.state, metrics = step_fn(run.state)
            run.acc = _accumulate(run.acc, metrics)
            run.step += 1
            bar.update(1)
            if run.step % eval_every == 0 or run.step == n_steps:
                row = run.log_row(eval_fn, patience, desc)
                bar.set_postfix({k: v for k, v in row.items() if k != "step"}, refresh=False)
            if (ckpt_every is not None and run.step % ckpt_every == 0) or run.step == n_steps:
                run.save()
        run.save()  # also at an early stop; a no-op when this step is saved already
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    if math.isinf(run.es["best_val"]):  # no val_loss seen: the last state is the best
        run.best_state, run.es["best_step"] = run.state, run.step
    return FitResult(run.state, run.best_state, int(run.es["best_step"]), run.history)
