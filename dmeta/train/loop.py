"""The one training loop: steps, periodic evaluation, early stopping, logs, resumable checkpoints.

A run is a pure function of its ``TrainState`` (sampling is folded into the step with
``dmeta.meta.steps.with_sampler``, so ``state.key`` carries the sampler), which makes
resuming exact: a run killed at any point and restarted with the same ``ckpt_dir``
ends with bit-identical parameters, best state and log rows. Both typed keys
(``jax.random.key``) and raw ``uint32[2]`` keys (``jax.random.PRNGKey``) are
checkpointed as they are.

A call of the step function may apply several updates (``steps_per_call``):
:func:`scan_steps` runs a chunk of steps as one ``lax.scan`` and :func:`epoch_step` one
epoch of shuffled minibatches, so per-step, scanned and epoch-wise training all get the
same evaluation, early stopping, progress and resume. Inside :func:`checkpoints` (the
method harness opens one per cell) every ``fit`` checkpoints and logs its curve without
being told where, so an interrupted cell resumes inside its training.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from dmeta import distributed
from dmeta.train.checkpoint import Checkpointer
from dmeta.train.logs import MetricsLog, Row, scalar_metrics
from dmeta.train.state import TrainState
from dmeta.types import Array

logger = logging.getLogger(__name__)

StepFn = Callable[[TrainState], tuple[TrainState, Mapping[str, Array]]]
EvalFn = Callable[[TrainState], Mapping[str, Any]]

VAL_KEY = "val_loss"


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns.

    Attributes:
      state: the state after the last step run.
      best_state: the state with the lowest monitored metric seen (the last state when
        ``eval_fn`` does not return it).
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


def _counter(value: Any) -> Any:
    """An early-stopping counter from a checkpoint: a Python scalar, or an array per row."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value


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


@dataclasses.dataclass(frozen=True)
class _Stopping:
    """Early stopping: the monitored eval metric, the patience (evaluations), the first step
    at which stopping is allowed, the last step whose evaluation does not count against
    patience, the rows stopped one by one (None: one scalar), and how many times, by what
    factor, the learning rate is cut when patience runs out."""

    monitor: str
    patience: int | None
    min_steps: int
    patience_from: int = 0
    rows: int | None = None
    lr_decays: int = 0
    lr_factor: float = 0.1


def _check_args(n_steps, eval_every, ckpt_every, steps_per_call, stop: _Stopping, eval_fn):
    if eval_every < 1 or (ckpt_every is not None and ckpt_every < 1) or steps_per_call < 1:
        raise ValueError(
            "need eval_every, ckpt_every and steps_per_call >= 1, got "
            f"{eval_every}, {ckpt_every}, {steps_per_call}"
        )
    uneven = {
        name: value
        for name, value in (
            ("n_steps", n_steps),
            ("eval_every", eval_every),
            ("ckpt_every", ckpt_every),
        )  # fmt: skip
        if value is not None and value % steps_per_call
    }
    if uneven:
        raise ValueError(f"{uneven} must be multiples of steps_per_call={steps_per_call}")
    if stop.patience is not None and (stop.patience < 1 or eval_fn is None):
        raise ValueError(f"patience={stop.patience} needs patience >= 1 and an eval_fn")
    if stop.lr_decays and (stop.patience is None or stop.rows is not None):
        raise ValueError(f"lr_decays={stop.lr_decays} needs patience and one model (no rows)")


def _initial_tree(step_fn: StepFn, state: TrainState, stop: _Stopping) -> dict[str, Any]:
    """What a checkpoint holds: states, running metric sums, early-stopping counters (one
    per row with ``stop.rows``; the learning-rate cuts left with ``stop.lr_decays``)."""
    rows = stop.rows
    shapes = getattr(step_fn, "metric_shapes", None)
    metric_shapes = shapes(state) if shapes is not None else jax.eval_shape(step_fn, state)[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), dict(metric_shapes))
    shape = () if rows is None else (rows,)
    early_stop = {
        "best_val": np.full(shape, np.inf),
        "best_step": np.full(shape, int(state.step)),
        "bad_evals": np.zeros(shape, np.int64),
        "stopped": np.asarray(False),
    }
    if rows is not None:
        early_stop["row_stopped"] = np.zeros(shape, bool)
    if stop.lr_decays:
        early_stop["lr_decays_left"] = np.asarray(stop.lr_decays)
    return {
        "state": state,
        "best_state": state,
        "acc": {"sum": zeros, "count": jnp.zeros((), jnp.int32)},
        "early_stop": early_stop,
    }


def _train_row(acc: dict[str, Any], step: int, span: int, desc: str, log: MetricsLog | None) -> Row:
    """The mean train metrics of the ``span`` steps up to ``step``; on NaN / inf, logs the
    row to ``log`` (the curve shows where the fit diverged) and raises ``NonFiniteError``."""
    count = int(acc["count"])
    row = {"step": step, **scalar_metrics(jax.tree.map(lambda s: s / count, acc["sum"]))}
    bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        if log is not None:
            log.append(row)
        raise NonFiniteError(
            f"{desc}: train metrics {bad} are not finite in steps {step - span + 1}-{step}; "
            "lower the learning rate or check the inputs' scale"
        )
    return row


def _early_stop(es: dict[str, Any], row: Row, step: int, stop: _Stopping) -> bool:
    """Updates the counters ``es`` from ``row``; True when ``row`` is the best so far."""
    if stop.monitor not in row:
        if stop.patience is not None:
            raise ValueError(f"patience needs eval_fn to return {stop.monitor!r}, got {row}")
        return False
    improved = row[stop.monitor] < es["best_val"]
    if improved:
        es.update(best_val=row[stop.monitor], best_step=step, bad_evals=0)
    elif step > stop.patience_from:
        es["bad_evals"] += 1
    es["stopped"] = (
        stop.patience is not None and es["bad_evals"] >= stop.patience and step >= stop.min_steps
    )
    return improved


def _plateau_cut(es: dict[str, Any]) -> bool:
    """Whether patience ran out with learning-rate cuts left: then one is used, patience
    starts again and the run goes on (reduce on plateau)."""
    if not (es["stopped"] and es.get("lr_decays_left", 0) > 0):
        return False
    es.update(lr_decays_left=es["lr_decays_left"] - 1, bad_evals=0, stopped=False)
    return True


def _learning_rate(state: TrainState) -> Array | None:
    """The ``learning_rate`` hyperparameter in ``state.opt_state`` (``optax.inject_hyperparams``),
    or None."""
    return optax.tree_utils.tree_get(state.opt_state, "learning_rate")


def _scaled_learning_rate(state: TrainState, factor: float) -> TrainState:
    """``state`` with the learning rate in its optimizer state times ``factor``."""
    lr = _learning_rate(state)
    lr = jnp.asarray(lr * factor, jnp.result_type(lr))
    return dataclasses.replace(
        state, opt_state=optax.tree_utils.tree_set(state.opt_state, learning_rate=lr)
    )


def _early_stop_rows(es: dict[str, Any], values: np.ndarray, step: int, stop: _Stopping):
    """``_early_stop`` for ``values: f[R]``, one early stop per row: a row's best follows its
    own value until its own patience runs out, and the run stops when every row has.
    Returns bool[R], the rows whose value is their best so far."""
    active = ~es["row_stopped"]
    better = active & (values < es["best_val"])
    es["best_val"] = np.where(better, values, es["best_val"])
    es["best_step"] = np.where(better, step, es["best_step"])
    es["bad_evals"] = np.where(better, 0, es["bad_evals"] + (active & (step > stop.patience_from)))
    if stop.patience is not None and step >= stop.min_steps:
        es["row_stopped"] = es["row_stopped"] | (es["bad_evals"] >= stop.patience)
    es["stopped"] = bool(es["row_stopped"].all())
    return better


def _take_rows(best: TrainState, state: TrainState, rows: np.ndarray) -> TrainState:
    """``best`` with the rows ``rows: bool[R]`` of every ``[R, ...]`` leaf taken from
    ``state`` (fresh buffers; leaves without the row axis, like the shared step, from
    ``state``)."""

    def take(b, s):
        if s.ndim == 0 or s.shape[0] != len(rows):
            return s.copy()
        return jnp.where(rows.reshape(-1, *[1] * (s.ndim - 1)), s, b)

    return jax.tree.map(take, best, state)


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
    ckpt: _Saver | None

    @classmethod
    def start(cls, tree: dict[str, Any], ckpt: _Saver | None, log: MetricsLog | None) -> _Run:
        es = {k: _counter(v) for k, v in tree["early_stop"].items()}
        step = int(tree["state"].step)
        history = list(log.restart(step)) if log is not None else []
        return cls(tree["state"], tree["best_state"], tree["acc"], es, step, history, log, ckpt)

    def log_row(self, eval_fn: EvalFn | None, stop: _Stopping, span: int, desc: str) -> Row:
        """Logs a row (train means, evaluation), updates early stopping and the best state."""
        row = _train_row(self.acc, self.step, span, desc, self.log)
        self.acc = jax.tree.map(jnp.zeros_like, self.acc)
        evaluated = dict(eval_fn(self.state)) if eval_fn is not None else {}
        if stop.rows is None or stop.monitor not in evaluated:
            row.update(scalar_metrics(evaluated))
            if _early_stop(self.es, row, self.step, stop):
                self.best_state = _copy(self.state)
            if _plateau_cut(self.es):
                self.state = _scaled_learning_rate(self.state, stop.lr_factor)
                logger.info("%s: no better %s at step %d, learning rate x %g",
                            desc, stop.monitor, self.step, stop.lr_factor)  # fmt: skip
        else:  # the mean is logged under `monitor`, each row's value under `monitor/r`
            values = np.asarray(evaluated.pop(stop.monitor), np.float64).reshape(stop.rows)
            per_row = {f"{stop.monitor}/{r}": v for r, v in enumerate(values)}
            row.update(scalar_metrics({**evaluated, stop.monitor: values.mean(), **per_row}))
            better = _early_stop_rows(self.es, values, self.step, stop)
            if better.any():
                self.best_state = _take_rows(self.best_state, self.state, better)
        self.history.append(row)
        if self.log is not None:
            self.log.append(row)
        return row

    def save(self, *, end: bool = False) -> None:
        """Saves a checkpoint when ``ckpt`` says one is due (``end``: the fit is over)."""
        if self.ckpt is not None and self.ckpt.due(self.step, end=end):
            early_stop = {k: np.asarray(v) for k, v in self.es.items()}
            saved = dict(
                state=self.state, best_state=self.best_state, acc=self.acc, early_stop=early_stop
            )
            self.ckpt.save(self.step, saved)


@dataclasses.dataclass
class _Saver:
    """When and where one ``fit`` saves: every ``every`` steps and at the end, or (a fit
    checkpointed by a ``checkpoints`` block that asked for no ``ckpt_every``) by the clock:
    every ``every_seconds`` and at the end when the fit took ``min_seconds`` or more, so that
    short fits, cheaper to redo than to save, write nothing."""

    directory: Path
    every: int | None = None
    min_seconds: float | None = None
    every_seconds: float | None = None
    _ckpt: Checkpointer | None = None
    _started: float = dataclasses.field(default_factory=time.monotonic)
    _saved: float = dataclasses.field(default_factory=time.monotonic)

    def restore(self, tree: dict[str, Any]) -> dict[str, Any] | None:
        """The latest checkpoint in the structure of ``tree``, or None when there is none."""
        if not self.directory.exists():
            return None
        self._ckpt = Checkpointer(self.directory)
        return self._ckpt.restore(tree) if self._ckpt.latest_step() is not None else None

    def due(self, step: int, *, end: bool) -> bool:
        if self.min_seconds is None:
            return end or (self.every is not None and step % self.every == 0)
        now = time.monotonic()
        if end:
            return now - self._started >= self.min_seconds
        return now - self._saved >= self.every_seconds

    def save(self, step: int, tree: dict[str, Any]) -> None:
        if self._ckpt is None:
            self._ckpt = Checkpointer(self.directory)
        self._ckpt.save(step, tree)
        self._saved = time.monotonic()

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()


@dataclasses.dataclass
class _Scope:
    """Where the fits of a ``checkpoints`` block write, how many have started (``names``),
    and the curves of fits that did not run in it but stay (``kept``; ``keep_all``: every
    curve in the folder)."""

    ckpt_root: Path
    curve_root: Path | None
    min_seconds: float
    every_seconds: float
    count: int = 0
    names: list[str] = dataclasses.field(default_factory=list)
    kept: set[str] = dataclasses.field(default_factory=set)
    keep_all: bool = False


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("fit_scope", default=None)


@contextlib.contextmanager
def checkpoints(
    ckpt_root: str | os.PathLike,
    *,
    curves: str | os.PathLike | None = None,
    min_seconds: float = 20.0,
    every_seconds: float = 300.0,
) -> Iterator[_Scope]:
    """Within the block, every ``fit`` given no ``ckpt_dir`` checkpoints itself; yields the
    block's record, whose ``names`` lists the folder / curve names of its fits in order.

    The i-th fit of the block (from 0) saves to ``ckpt_root/<iii>-<desc>-<fingerprint>``:
    every ``every_seconds`` and when it ends if it ran ``min_seconds`` or more (with its own
    ``ckpt_every``: every that many steps and at the end); with ``curves`` its log rows go
    to ``curves/<same name>.csv`` / ``.jsonl`` unless it has a ``log_path``. Run again, a
    block whose fits start in the same order restores the fits that ended (running no step)
    and resumes the interrupted one from its last checkpoint; the fingerprint (initial
    state, n_steps, steps_per_call) keeps a fit from restoring a checkpoint of another fit
    that took its place.
    """
    scope = _Scope(Path(ckpt_root), None if curves is None else Path(curves), min_seconds,
                   every_seconds)  # fmt: skip
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def block_names() -> list[str] | None:
    """The names of the fits started so far in the current ``checkpoints`` block (None
    outside one): a caller can tell which fits a piece of work ran."""
    scope = _SCOPE.get()
    return None if scope is None else list(scope.names)


def keep_curves(names: Iterable[str] | None) -> None:
    """Marks curves of fits that ran in an earlier try of the current block (a memoized
    tuning point, say) as belonging to it (None: names unknown, keep every curve); a no-op
    outside a block."""
    scope = _SCOPE.get()
    if scope is None:
        return
    if names is None:
        scope.keep_all = True
    else:
        scope.kept.update(names)


def _fingerprint(state: TrainState, *numbers: int, settings: Mapping | None = None) -> str:
    """8 hex digits of a hash of the initial state's values (learning rates that live in the
    optimizer state included), ``numbers`` and ``settings`` (by sorted key; each value a
    pytree whose array leaves, such as the training data or sample weights, count by their
    values and every other leaf by its ``repr``)."""
    digest = hashlib.sha1(repr(numbers).encode())
    items = sorted((settings or {}).items())
    for key, tree in [*items, ("", state)]:
        leaves, treedef = jax.tree.flatten(tree)
        digest.update(f"{key}:{treedef}".encode())
        for leaf in leaves:
            if not isinstance(leaf, (np.ndarray, jax.Array)):
                digest.update(repr(leaf).encode())
                continue
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            digest.update(np.ascontiguousarray(distributed.to_host(leaf)).tobytes())
    return digest.hexdigest()[:8]


def _claim_moved(scope: _Scope, name: str) -> None:
    """Renames to ``name`` the checkpoint (and curve) of the same fit saved at another place
    in the block, when ``name`` has none: an earlier try of the block that ran one fit more
    or less before it (a memoized step that the resumed process has to redo, say) would
    otherwise leave this fit's checkpoint under another number and run it again."""
    if (scope.ckpt_root / name).exists() or not scope.ckpt_root.exists():
        return
    suffix = name.split("-", 1)[1]
    moved = [
        p for p in sorted(scope.ckpt_root.glob(f"[0-9][0-9][0-9]-{suffix}"))
        if p.name not in scope.names
    ]  # fmt: skip
    if not moved:
        return
    old = moved[0].name
    moved[0].rename(scope.ckpt_root / name)
    for ext in (".csv", ".jsonl"):
        curve = None if scope.curve_root is None else scope.curve_root / f"{old}{ext}"
        if curve is not None and curve.exists():
            curve.rename(scope.curve_root / f"{name}{ext}")


def _saver(desc: str, state: TrainState, ckpt_dir, ckpt_every, log_path, sizes: tuple[int, int],
           settings: Mapping | None = None):  # fmt: skip
    """``(saver or None, log_path)`` of a ``fit``: its own ``ckpt_dir``, or inside a
    ``checkpoints`` block a folder named by its place in the block, its ``desc`` and a
    fingerprint of its initial state, ``sizes`` (n_steps, steps_per_call) and ``settings``."""
    scope = _SCOPE.get()
    if ckpt_dir is not None or scope is None:
        saver = None if ckpt_dir is None else _Saver(Path(ckpt_dir), ckpt_every)
        return saver, log_path
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", desc)
    name = f"{scope.count:03d}-{slug}-{_fingerprint(state, *sizes, settings=settings)}"
    scope.count += 1
    scope.names.append(name)
    if distributed.is_main_process():
        _claim_moved(scope, name)
    distributed.sync(f"claim:{name}")  # the others look for the checkpoint after the rename
    if log_path is None and scope.curve_root is not None and distributed.is_main_process():
        log_path = scope.curve_root / f"{name}.csv"
    if ckpt_every is not None:
        return _Saver(scope.ckpt_root / name, ckpt_every), log_path
    clock = dict(min_seconds=scope.min_seconds, every_seconds=scope.every_seconds)
    return _Saver(scope.ckpt_root / name, **clock), log_path


def fit(
    step_fn: StepFn,
    state: TrainState,
    *,
    n_steps: int,
    eval_fn: EvalFn | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    monitor: str = VAL_KEY,
    min_steps: int = 0,
    patience_from: int = 0,
    lr_decays: int = 0,
    lr_factor: float = 0.1,
    rows: int | None = None,
    steps_per_call: int = 1,
    ckpt_dir: str | os.PathLike | None = None,
    ckpt_every: int | None = None,
    log_path: str | os.PathLike | None = None,
    desc: str = "train",
    settings: Mapping | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Runs ``step_fn`` until ``state.step == n_steps`` or early stopping.

    Every ``eval_every`` steps and at the last step a row is logged: ``step``, the mean
    of each train metric over the steps since the previous row (a NaN or infinite mean
    stops the run with ``NonFiniteError`` naming the steps), and ``eval_fn(state)``. A
    ``monitor`` value lower than the best so far records ``best_state``; after
    ``patience`` evaluations in a row without improvement (NaN never improves; those up to
    step ``patience_from`` do not count), and not before step ``min_steps``, the run stops.

    With ``ckpt_dir``, a checkpoint of the state, best state, early-stopping counters and
    the running train-metric sums is saved every ``ckpt_every`` steps and when the run
    ends (only then when ``ckpt_every`` is None); if ``ckpt_dir`` already holds one, the
    run restores the latest and continues from it, and ``log_path`` is truncated to that
    step. Nothing is saved on an exception: a crashed run resumes from its last periodic
    checkpoint and redoes the steps since. Inside a :func:`checkpoints` block both
    default to the block's folders.

    Args:
      step_fn: ``step_fn(state) -> (state, metrics)`` of scalar metrics, usually
        ``jax.jit(with_sampler(train_step, sample_fn))``; it may donate ``state``. It
        applies ``steps_per_call`` updates (``state.step`` grows by as much) and returns
        their mean metrics (:func:`scan_steps`, :func:`epoch_step`). ``fit`` learns the
        metrics' structure from ``jax.eval_shape(step_fn, state)``, or from
        ``step_fn.metric_shapes(state)`` when the step cannot be traced.
      state: the initial state; on resume only its structure, shapes and dtypes are used.
      n_steps: total number of updates (the final ``state.step``), not updates to add.
      eval_fn: ``eval_fn(state) -> {monitor: ..., ...}`` of scalars.
      eval_every: updates between log rows and evaluations.
      patience: stop after this many evaluations without a lower ``monitor``; needs
        ``eval_fn`` returning it. None: never stop early.
      monitor: the eval metric that early stopping and ``best_state`` follow (lower wins).
      min_steps: no early stop before this many updates.
      patience_from: evaluations up to this update do not count against ``patience``
        (e.g. a loss-weight schedule's last change: the run then gets ``patience``
        evaluations after it to beat the best so far, which stays eligible).
      lr_decays: reduce on plateau: the first ``lr_decays`` times patience runs out, the
        learning rate in the optimizer state (``learning_rate`` of an
        ``optax.inject_hyperparams`` state) is multiplied by ``lr_factor`` and patience
        starts again from the current state instead of stopping (``best_state`` keeps
        following ``monitor``). 0: stop at the first plateau. Needs ``patience``, no ``rows``.
      rows: models trained side by side on the state's leading axis (``[rows, ...]``
        leaves, e.g. regions under ``vmap``), each early-stopped on its own: ``eval_fn``
        returns ``monitor`` as f32[rows]; a row's leaves in ``best_state`` come from its
        lowest value until it has gone ``patience`` evaluations without improving, and the
        run stops when every row has. The log row holds the mean under ``monitor`` and
        each row's value under ``monitor/r``; ``best_step`` is the latest of the rows'
        best steps. None: one model, one scalar ``monitor``.
      steps_per_call: updates per call of ``step_fn``; ``n_steps``, ``eval_every`` and
        ``ckpt_every`` must be multiples of it.
      ckpt_dir: checkpoint folder (resumed from when it holds a checkpoint).
      ckpt_every: updates between checkpoints.
      log_path: writes rows to ``log_path`` with suffixes ``.csv`` and ``.jsonl``.
      desc: progress bar label (and the run's name in errors and checkpoint folders).
      settings: what shapes the run without living in ``state`` (a loss weight, a batch
        size, a model option that leaves the parameters' shapes alone, sample weights as an
        array), by name; it joins
        the checkpoint fingerprint, so two fits of a block that differ only there never
        restore each other's checkpoints. None: the fingerprint of state and sizes alone.
      progress: show a tqdm progress bar with the time left (None: only on a terminal;
        the bar goes when the fit ends, its rows stay in the log).

    Returns:
      ``FitResult``.

    Raises:
      ValueError: bad ``eval_every`` / ``ckpt_every`` / ``patience`` / ``steps_per_call``,
        or ``patience`` without ``monitor`` from ``eval_fn``.
      NonFiniteError: a train metric's mean is NaN or infinite.
    """
    stop = _Stopping(monitor, patience, min_steps, patience_from, rows, lr_decays, lr_factor)
    # the stopping rule shapes the run: it joins the checkpoint fingerprint
    settings = {**(settings or {}), "stopping": dataclasses.astuple(stop), "eval_every": eval_every}
    _check_args(n_steps, eval_every, ckpt_every, steps_per_call, stop, eval_fn)
    if lr_decays and _learning_rate(state) is None:
        raise ValueError(f"lr_decays={lr_decays} needs a learning_rate in the optimizer state "
                         "(optax.inject_hyperparams)")  # fmt: skip
    saver, log_path = _saver(
        desc, state, ckpt_dir, ckpt_every, log_path, (n_steps, steps_per_call), settings
    )
    tree = _initial_tree(step_fn, state, stop)
    bar = None
    try:
        restored = saver.restore(tree) if saver is not None else None
        if restored is not None:
            tree = restored
        else:
            tree["best_state"] = _copy(state)
        run = _Run.start(tree, saver, MetricsLog(log_path) if log_path is not None else None)
        bar = tqdm(
            total=n_steps,
            initial=run.step,
            desc=desc,
            disable=None if progress is None else not progress,
            leave=False,
            dynamic_ncols=True,
        )
        while run.step < n_steps and not run.es["stopped"]:
            run.state, metrics = step_fn(run.state)
            run.acc = _accumulate(run.acc, metrics)
            run.step += steps_per_call
            bar.update(steps_per_call)
            if run.step % eval_every == 0 or run.step == n_steps:
                span = int(run.acc["count"]) * steps_per_call
                row = run.log_row(eval_fn, stop, span, desc)
                bar.set_postfix({k: v for k, v in row.items() if k != "step"}, refresh=False)
            if run.step < n_steps and not run.es["stopped"]:
                run.save()
        run.save(end=True)  # also at an early stop; a no-op when this step is saved already
    finally:
        if bar is not None:
            bar.close()
        if saver is not None:
            saver.close()
    if rows is not None:  # rows without a monitored value: their last state is their best
        never = np.isinf(run.es["best_val"])
        if never.any():
            run.best_state = _take_rows(run.best_state, run.state, never)
            run.es["best_step"] = np.where(never, run.step, run.es["best_step"])
        return FitResult(run.state, run.best_state, int(run.es["best_step"].max()), run.history)
    if math.isinf(run.es["best_val"]):  # no monitored value seen: the last state is the best
        run.best_state, run.es["best_step"] = run.state, run.step
    return FitResult(run.state, run.best_state, int(run.es["best_step"]), run.history)


def chunking(n_steps: int, eval_every: int) -> tuple[int, int]:
    """``(eval_every, steps_per_call)`` for ``scan_steps`` chunks: the evaluation interval
    capped at ``n_steps`` and the largest chunk that divides both."""
    every = min(eval_every, n_steps)
    return every, math.gcd(n_steps, every)


def scan_steps(step_fn: Callable[..., tuple[TrainState, Mapping[str, Array]]], length: int):
    """``length`` steps as one ``lax.scan``: ``chunk(state, *args) -> (state, mean metrics)``.

    Jit the result and hand ``fit`` a closure over the ``args`` (data as arguments, not
    constants) with ``steps_per_call=length``; the states and metrics equal ``length``
    calls of ``step_fn(state, *args)`` one after the other.
    """

    def chunk(state: TrainState, *args: Any):
        state, metrics = jax.lax.scan(lambda s, _: step_fn(s, *args), state, None, length=length)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return chunk


Batch = dict[str, Any]
BatchStep = Callable[[TrainState, Batch, Any], tuple[TrainState, Mapping[str, Array]]]


@dataclasses.dataclass
class EpochStep:
    """One epoch of shuffled fixed-size minibatches as a ``fit`` step (:func:`epoch_step`).

    Attributes:
      steps: updates per epoch (``steps_per_call`` of ``fit``).
    """

    batch_step: BatchStep
    data: Mapping[str, np.ndarray]
    batch_size: int
    consts: Callable[[int], Any]
    before_epoch: Callable[[TrainState], tuple[TrainState, Mapping[str, np.ndarray]]] | None
    pad_weight: str | None
    steps: int
    strata: distributed.Strata | None = None
    mesh: Mesh | None = None
    _prepared: tuple[int, TrainState, Mapping[str, np.ndarray]] | None = None

    def _arrays(self, state: TrainState) -> tuple[TrainState, dict[str, np.ndarray]]:
        if self.before_epoch is None:
            return state, dict(self.data)
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == id(state):
            _, state, targets = prepared
        else:
            state, targets = self.before_epoch(state)
        return state, {**self.data, **targets}

    def _batch(self, arrays, idx: np.ndarray, real: np.ndarray) -> Batch:
        batch = {k: v[idx] for k, v in arrays.items()}
        if self.pad_weight is not None:
            batch[self.pad_weight] = batch[self.pad_weight] * real
        return batch if self.strata is None else distributed.global_batch(batch, self.mesh)

    def metric_shapes(self, state: TrainState) -> Mapping[str, jax.ShapeDtypeStruct]:
        """The metrics' structure, traced on one batch (``before_epoch`` runs once here and
        its targets serve the next epoch of this ``state``)."""
        arrays = self._arrays(state)[1]
        if self.before_epoch is not None:
            self._prepared = (
                id(state),
                state,
                {k: arrays[k] for k in arrays if k not in self.data},
            )
        n = len(next(iter(self.data.values())))
        width = self.batch_size if self.strata is None else self.strata.local_batch(self.batch_size)
        batch = self._batch(arrays, np.arange(width) % n, np.ones(width, np.float32))
        return jax.eval_shape(lambda s, b: self.batch_step(s, b, self.consts(0))[1], state, batch)

    def _order(self, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """One epoch's rows of ``data`` i64[steps, B_local] and first draws f32[steps, B_local]:
        a permutation of all rows, or with ``strata`` this process's part of stratified
        batches (``distributed.Strata.order``)."""
        if self.strata is not None:
            return self.strata.order(key, self.batch_size)
        n, bs = len(next(iter(self.data.values()))), self.batch_size
        order = np.asarray(jax.random.permutation(key, n))[np.arange(self.steps * bs) % n]
        real = (np.arange(self.steps * bs) < n).astype(np.float32)
        return order.reshape(self.steps, bs), real.reshape(self.steps, bs)

    def __call__(self, state: TrainState) -> tuple[TrainState, Mapping[str, Array]]:
        epoch = int(state.step) // self.steps
        state, arrays = self._arrays(state)
        key, sub = jax.random.split(state.key)
        order, real = self._order(sub)
        state, consts, sums = dataclasses.replace(state, key=key), self.consts(epoch), None
        for b in range(self.steps):
            state, metrics = self.batch_step(state, self._batch(arrays, order[b], real[b]), consts)
            sums = dict(metrics) if sums is None else jax.tree.map(jnp.add, sums, dict(metrics))
        return state, jax.tree.map(lambda s: s / self.steps, sums)


def epoch_step(
    batch_step: BatchStep,
    data: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    consts: Callable[[int], Any] = lambda epoch: None,
    before_epoch: Callable[[TrainState], tuple[TrainState, Mapping[str, np.ndarray]]] | None = None,
    pad_weight: str | None = None,
    strata: distributed.Strata | None = None,
    mesh: Mesh | None = None,
) -> EpochStep:
    """One epoch of shuffled minibatches of per-row host arrays as a ``fit`` step.

    Each call splits ``state.key`` to draw a permutation of the N rows and runs
    ``batch_step(state, batch, consts(epoch))`` on ``ceil(N / B)`` batches of
    ``B = min(batch_size, N)`` rows (the last one filled up from the start of the
    permutation); its metrics are the means over the batches. ``batch_step`` adds one to
    ``state.step`` per batch, so ``epoch = state.step // steps``. Train with
    ``fit(step, state, n_steps=epochs * step.steps, steps_per_call=step.steps,
    eval_every=step.steps)``.

    Args:
      batch_step: one update (jitted by the caller, e.g. ``dmeta.parallel.jit_step``).
      data: per-row host arrays, leading axis N.
      batch_size: rows per batch.
      consts: epoch -> the step's traced constants (e.g. a loss-weight schedule).
      before_epoch: ``state -> (state, per-row arrays)`` recomputed from the model before
        each epoch and added to ``data`` (e.g. pseudo-labels, outlier weights).
      pad_weight: a key of ``data`` set to 0 on the filling rows, so they do not count.
      strata: ``data`` holds this process's strata of rows of several processes: each batch
        of ``batch_size`` rows takes ``batch_size / S`` of every stratum (``Strata.order``),
        each process its own, assembled into a global batch over ``mesh``
        (``distributed.global_batch``); an epoch is ``Strata.steps`` batches. The
        permutations are drawn as above, one per stratum.
      mesh: the ``"data"`` mesh of the global batches (with ``strata``).
    """
    if strata is not None:
        steps = strata.steps(batch_size)
        return EpochStep(
            batch_step, data, batch_size, consts, before_epoch, pad_weight, steps, strata, mesh
        )
    n = len(next(iter(data.values())))
    bs = min(batch_size, n)
    return EpochStep(batch_step, data, bs, consts, before_epoch, pad_weight, -(-n // bs))
