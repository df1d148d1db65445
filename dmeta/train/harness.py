"""The method harness: methods x seeds (x settings) as resumable cells, and equal tuning.

A run folder holds the run's ``command.txt`` and ``config.json`` and one CSV per finished
cell under ``cells/`` (long results schema, written atomically). ``run_cells`` skips the
cells already written, so a run killed at any point and started again with the same
command finishes with the same ``results.csv`` as an uninterrupted one; ``fresh=True``
(``--fresh``) starts over. A folder holding another config's cells is refused. While a
cell runs, every training loop in it (``dmeta.train.loop.fit``) checkpoints under
``ckpt/<cell>/`` (removed when the cell is written), so a killed cell resumes inside its
training, and logs its curve to ``curves/<cell>/<i>-<name>.csv`` (kept: the evidence
that training converged).

``tune`` gives every method of a table the same procedure: the same number of grid
points (a seeded random subset when a grid is larger than ``trials``), each scored on
validation data by the reported metric, the lowest kept; ``hp_rows`` writes the chosen
values into the results as metrics ``hp:<name>``. The chosen point of a (setting, method)
is kept in ``tuned/<family>.json`` and every score as it is known in
``tuned/<family>.trials.jsonl`` (``tuning_memo``), so a tuning killed between its fits
resumes without them, also where the checkpoints are gone (``ckpt/`` is not committed).

Several processes may run the same command on the same folder at once (one per core or
device, or a second one started later): each claims a cell before running it (an exclusive
``fcntl`` lock on ``cells/<key>.claim``, released when the cell is written or the process
dies) and skips the cells another process holds, then waits for those before it finishes;
a family's shared tuning runs once, under a lock on ``tuned/<family>.lock`` (a cell whose
tuning another process holds is put back as a held cell is, so the processes tune
different families at once). ``dmeta run --workers N`` starts such processes. A JAX
multi-process run (``dmeta.distributed``) runs every cell in all its processes together
and claims nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmeta import distributed
from dmeta.config import flatten
from dmeta.train import loop
from dmeta.train.loop import NonFiniteError
from dmeta.train.results import COLUMNS, read_rows, validate_results

logger = logging.getLogger(__name__)

CELLS = "cells"
ORDER = "order.txt"  # in cells/: the cell keys of the run's last ``run_cells``, in order
CLAIM = ".claim"  # cells/<key>.claim: locked by the process running the cell
CKPT = "ckpt"
CURVES = "curves"
TUNED = "tuned"
RUN_FILES = ("command.txt", "config.json", "results.csv", "results.md")


class RunError(RuntimeError):
    """An output folder that cannot take this run (another run's config lives there)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work of a results table.

    Attributes:
      method: the method's name as reported.
      seed: model seed.
      setting: a free sub-division of the run (a dataset cut, a sweep point); "main" if none.
    """

    method: str
    seed: int
    setting: str = "main"

    @property
    def family(self) -> str:
        """File-name-safe identifier of the (setting, method): the cell's seeds share it."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.setting}__{self.method}")

    @property
    def key(self) -> str:
        """File-name-safe identifier, unique per (setting, method, seed)."""
        return f"{self.family}__seed{self.seed}"


def write_atomic(path: Path, text: str | bytes) -> None:
    """Writes ``text`` (or bytes) to ``path`` through a temporary file and ``os.replace``;
    in a multi-process run only process 0 writes (the others wait for it)."""

    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes may race
        tmp.write_bytes(text) if isinstance(text, bytes) else tmp.write_text(text)
        os.replace(tmp, path)

    distributed.write_once(path, write)


def open_run(
    out: str | os.PathLike,
    cfg: Any,
    *,
    data: str,
    seeds: int,
    methods: Sequence[str],
    command: str,
    fresh: bool,
    outputs: Sequence[str] = (),
) -> Path:
    """Prepares ``out`` for a run: call it after the data is validated and loaded.

    Writes ``command.txt`` and ``config.json`` (every config leaf by dotted path, plus
    ``data``, ``seeds`` and ``methods``), atomically. Keeps finished cells when the saved
    config and data spec equal these (cells are keyed by method and seed, so a rerun may ask
    for more of either); ``fresh`` removes the cells, checkpoints, curves and the run's
    outputs first: the harness's files and ``outputs``, the files and folders (relative to
    ``out``) that the experiment itself writes there.

    Raises:
      RunError: ``out`` holds cells of a run with another config or data (the differing
        fields are named) and ``fresh`` is False.
    """
    out = Path(out)
    record = {**flatten(cfg), "data": data, "seeds": seeds, "methods": list(methods)}
    record = json.loads(json.dumps(record, default=str))
    saved_path = out / "config.json"
    if fresh and distributed.is_main_process():
        for folder in (CELLS, CKPT, CURVES, TUNED):
            shutil.rmtree(out / folder, ignore_errors=True)
        for name in (*RUN_FILES, *outputs):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    elif (out / CELLS).exists() and saved_path.exists():
        saved = json.loads(saved_path.read_text())
        defaults = _class_defaults(cfg)  # what a field added since the run was saved did then
        keys = (set(saved) | set(record)) - {"seeds", "methods"}
        differ = sorted(k for k in keys if saved.get(k, defaults.get(k)) != record.get(k))
        if differ:
            raise RunError(
                f"{out}: holds cells of a run with another config ({', '.join(differ[:5])} "
                "differ); rerun with --fresh or another --out"
            )
    write_atomic(out / "command.txt", command.rstrip("\n") + "\n")
    write_atomic(saved_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out


def _class_defaults(cfg: Any) -> dict[str, Any]:
    """What a run saved before a field existed did, by dotted path: every leaf of
    ``type(cfg)()`` as ``config.json`` stores it ({} when the config class needs arguments),
    overridden by the config class's ``BEFORE_ADDED`` (dotted path -> value) for a field
    added with a new behaviour as its default. A run folder saved before a field resumes
    when the field keeps the old behaviour, and is refused otherwise."""
    before = dict(getattr(type(cfg), "BEFORE_ADDED", {}))
    try:
        default = type(cfg)()
    except TypeError:
        return before
    return {**json.loads(json.dumps(flatten(default), default=str)), **before}


def run_cells(
    out: str | os.PathLike,
    cells: Sequence[Cell],
    run_cell: Callable[[Cell], Iterable[Mapping[str, Any]] | pd.DataFrame],
) -> pd.DataFrame:
    """Runs every cell not yet written under ``out/cells``; returns all rows in cell order.

    Args:
      out: run folder (``open_run`` first).
      cells: the cells, in the order to run.
      run_cell: cell -> long-schema rows (``experiment, dataset, method, group, seed,
        metric, value``); validated, then written as ``cells/<key>.csv``.

    Returns:
      The concatenated rows of all cells (finished earlier or now).
    """
    folder = Path(out) / CELLS
    write_atomic(folder / ORDER, "".join(f"{cell.key}\n" for cell in cells))  # every process
    done = sum((folder / f"{cell.key}.csv").exists() for cell in cells)
    methods = len({c.method for c in cells})
    logger.info(
        "%s: %d cells (%d methods x %d seeds x %d settings), %d done earlier, %d to run; "
        "the time left is logged after each",
        out, len(cells), methods, len({c.seed for c in cells}),
        len({c.setting for c in cells}), done, len(cells) - done,
    )  # fmt: skip
    frames: dict[Cell, pd.DataFrame] = {}
    seconds: dict[Cell, float] = {}
    held_elsewhere = []
    for i, cell in enumerate(cells):
        path = folder / f"{cell.key}.csv"
        if path.exists():
            frames[cell] = read_rows(path)
            logger.info("[%d/%d] %s: done earlier, kept", i + 1, len(cells), cell.key)
            continue
        with claim(folder, cell, wait=False) as mine:
            if mine:
                start = time.perf_counter()
                try:
                    with _deferring_tuning():
                        frames[cell] = _run_claimed(out, cell, run_cell, path)
                except TuningElsewhere:
                    held_elsewhere.append(cell)
                    logger.info("[%d/%d] %s: its tuning runs in another process, later",
                                i + 1, len(cells), cell.key)  # fmt: skip
                    continue
                seconds[cell] = time.perf_counter() - start
                busy = held_by_others(folder, cell)  # cells other processes run now
                to_run = [
                    c
                    for c in cells[i + 1 :]
                    if not (folder / f"{c.key}.csv").exists() and c.key not in busy
                ]
                logger.info(
                    "[%d/%d] %s written in %.0f s (about %.1f h left, %d process(es))",
                    i + 1, len(cells), cell.key, seconds[cell],
                    time_left(seconds, to_run) / (1 + len(busy)) / 3600, 1 + len(busy),
                )  # fmt: skip
            elif path.exists():
                frames[cell] = read_rows(path)
            else:
                held_elsewhere.append(cell)
                logger.info("[%d/%d] %s: running in another process", i + 1, len(cells), cell.key)
    for cell in held_elsewhere:  # wait for the other process; run the cell if it died first
        logger.info("%s: waiting for the process that runs it (or its tuning)", cell.key)
        path = folder / f"{cell.key}.csv"
        with claim(folder, cell, wait=True):
            frames[cell] = read_rows(path) if path.exists() else _run_claimed(
                out, cell, run_cell, path
            )  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return validate_results(pd.concat([frames[c] for c in cells], ignore_index=True))


def _run_claimed(
    out: Path,
    cell: Cell,
    run_cell: Callable[[Cell], Iterable[Mapping[str, Any]] | pd.DataFrame],
    path: Path,
) -> pd.DataFrame:
    """Runs a cell this process holds; writes its rows to ``path`` and returns them."""
    ckpt, curves = Path(out) / CKPT / cell.key, Path(out) / CURVES / cell.key
    with loop.checkpoints(ckpt, curves=curves) as fits:
        rows = run_cell(cell)
    frame = validate_results(pd.DataFrame(rows, columns=list(COLUMNS)))
    write_atomic(path, frame.to_csv(index=False))
    if distributed.is_main_process():
        shutil.rmtree(ckpt, ignore_errors=True)
        keep = set(fits.names) | fits.kept
        for stale in (p for p in curves.glob("*") if not fits.keep_all and p.stem not in keep):
            stale.unlink()  # a curve of an earlier, interrupted try of this cell
    return frame


class TuningElsewhere(Exception):
    """Raised by ``shared_choice`` in ``run_cells``'s first pass when another process holds
    the family's tuning: the cell is put back and run after the others."""


_DEFER_TUNING = contextvars.ContextVar("defer_tuning", default=False)  # run_cells's 1st pass


@contextlib.contextmanager
def _deferring_tuning() -> Iterator[None]:
    token = _DEFER_TUNING.set(True)
    try:
        yield
    finally:
        _DEFER_TUNING.reset(token)


@contextlib.contextmanager
def claim(folder: Path, cell: Cell, *, wait: bool) -> Iterator[bool]:
    """Holds ``cell`` for this process while the block runs: yields True when this process
    may run it (its CSV not written yet), False when another process holds it (``wait``
    False) or has written it. In a JAX multi-process run every process runs every cell, so
    it always yields True there.

    Args:
      folder: the run's ``cells/`` folder.
      cell: the cell.
      wait: block until another process's hold ends, instead of yielding False.
    """
    if distributed.process_info().process_count > 1:
        yield True
        return
    path = folder / f"{cell.key}{CLAIM}"
    with _locked(path, wait=wait) as held:
        yield held and not (folder / f"{cell.key}.csv").exists()


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool) -> Iterator[bool]:
    """An exclusive ``fcntl.flock`` on ``path`` (created; removed when released, its text
    ``host:pid`` of the holder); yields whether it is held (always, with ``wait``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed it while this process waited: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the one at ``path``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def held_by_others(folder: Path, mine: Cell) -> set[str]:
    """Keys of the cells that other live processes hold in ``folder`` (``cells/``) now,
    ``mine`` left out: one per process that shares the run, for the time-left estimate.
    (Testing a claim locks it for an instant; a process that tries it then skips the cell
    and comes back to it, so no cell is lost.)"""
    held = set()
    for path in folder.glob(f"*{CLAIM}"):
        key = path.name.removesuffix(CLAIM)
        if key == mine.key:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # released since the listing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.add(key)
        finally:
            os.close(fd)  # closing releases the lock if this process took it
    return held


def time_left(seconds: Mapping[Cell, float], to_run: Sequence[Cell]) -> float:
    """Estimated seconds to run the cells ``to_run``, from the cells timed so far.

    A cell is expected to take as long as the last timed cell of its (setting, method):
    with a tuning shared across seeds, only the first seed's cell tunes, and the ones after
    it take as long as each other. A family not timed yet takes the median of all.

    Args:
      seconds: run time of each cell run so far, in the order they ran (not empty).
      to_run: the cells left.
    """
    last = {cell.family: t for cell, t in seconds.items()}
    typical = float(np.median(list(seconds.values())))
    return sum(last.get(cell.family, typical) for cell in to_run)


def read_cells(out: str | os.PathLike, *, finished: bool = False) -> pd.DataFrame:
    """The rows of ``out/cells`` in the order of ``cells/order.txt``: what ``finish`` wrote to
    ``results.csv``, rebuilt from the cells (a folder may keep its cells and leave a large
    ``results.csv`` out of version control). ``finished``: only the cells written so far
    (a run in progress; empty rows when none is).

    Raises:
      FileNotFoundError: without ``finished``, a cell of the order not written yet (the
        run is unfinished: ``dmeta report --interim`` reads what it has).
    """
    folder = Path(out) / CELLS
    paths = [folder / f"{k}.csv" for k in (folder / ORDER).read_text().split()]
    missing = [p for p in paths if not p.exists()]
    if missing and not finished:
        raise FileNotFoundError(
            f"{out}: {len(missing)} of {len(paths)} cells not written yet (first: "
            f"{missing[0].name}); the run is unfinished (`dmeta report --interim` reads it)"
        )
    frames = [read_rows(p) for p in paths if p.exists()]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return validate_results(pd.concat(frames, ignore_index=True))


def progress(out: str | os.PathLike) -> tuple[int, int]:
    """``(cells written, cells in the run's order)`` of a run folder."""
    folder = Path(out) / CELLS
    if not (folder / ORDER).exists():
        raise FileNotFoundError(f"{out}: not a run folder (no {CELLS}/{ORDER})")
    keys = (folder / ORDER).read_text().split()
    return sum((folder / f"{k}.csv").exists() for k in keys), len(keys)


def finish(out: str | os.PathLike, results: pd.DataFrame) -> pd.DataFrame:
    """Writes the run's ``results.csv`` (validated, atomically), then its ``results.md`` and
    plots through ``dmeta.report``; returns the validated frame."""
    from dmeta import report

    results = validate_results(results)
    write_atomic(Path(out) / "results.csv", results.to_csv(index=False))
    distributed.write_once(Path(out) / "results.md", lambda _: report.write(out))
    return results


def grid_points(
    grid: Mapping[str, Sequence[Any]], *, trials: int | None = None, seed: int = 0
) -> list[dict]:
    """The points of ``grid`` (name -> values), first values first.

    With ``trials`` smaller than the grid: the first point (each name's first value, the
    method's default) and a seeded random ``trials - 1`` of the others, so ``trials=1``
    runs the defaults alone.
    """
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    if trials is None or trials >= len(points):
        return points
    pick = np.random.default_rng(seed).choice(len(points) - 1, size=trials - 1, replace=False)
    return [points[0]] + [points[i + 1] for i in sorted(pick)]


@dataclasses.dataclass(frozen=True)
class Tuned:
    """What ``tune`` chose: ``best`` point, its validation ``score``, every ``(point, score)``."""

    best: dict[str, Any]
    score: float
    trials: list[tuple[dict[str, Any], float]]


def _point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(dict(point), sort_keys=True, default=str)


def tuning_memo(out: str | os.PathLike | None, cell: Cell, *, per_seed: bool) -> Path | None:
    """Where ``tune`` records the scores of a cell's tuning: ``out/tuned/<family>.trials.jsonl``
    (``<cell key>`` with ``per_seed``, each seed tuning on its own); None without a run folder."""
    if out is None:
        return None
    return Path(out) / TUNED / f"{cell.key if per_seed else cell.family}.trials.jsonl"


def tune(
    grid: Mapping[str, Sequence[Any]],
    evaluate: Callable[[dict[str, Any]], float],
    *,
    trials: int | None = None,
    seed: int = 0,
    score_single: bool = False,
    memo: Path | None = None,
) -> Tuned:
    """Scores each grid point with ``evaluate`` (validation metric, lower is better).

    Non-finite scores lose to every finite one (a point whose training stops with
    ``NonFiniteError`` scores NaN, logged); ties keep the earlier point. A single
    point (``trials=1`` or a one-point grid) is returned unscored (score NaN) unless
    ``score_single`` (for an ``evaluate`` that also fits what the caller reuses).
    With ``memo`` (:func:`tuning_memo`) each score is appended to that file as it is known,
    with the names of the fits it ran (their curves then stay with the cell that resumes
    the tuning), and points already there are not evaluated again, so a tuning killed
    between points resumes without its finished fits (on another machine too, where no
    checkpoint survives); ``evaluate`` then runs only for the rest, so the caller must fit
    the chosen point itself when ``evaluate`` did not.
    """
    points = grid_points(grid, trials=trials, seed=seed)
    if len(points) == 1 and not score_single:
        return Tuned(best=points[0], score=float("nan"), trials=[(points[0], float("nan"))])
    lines = memo.read_text().splitlines() if memo is not None and memo.exists() else []
    recorded = {_point_key(r["point"]): r for r in map(json.loads, lines)}
    scored = []
    for point in points:
        if _point_key(point) in recorded:
            record = recorded[_point_key(point)]
            score = float(record["score"])
            scored.append((point, score))
            loop.keep_curves(record.get("fits"))  # their curves are this cell's, not stale
            logger.info("tune %s -> %.6g (recorded in %s)", point, score, memo.name)
            continue
        before = len(loop.block_names() or [])
        try:
            score = float(evaluate(point))
        except NonFiniteError as err:
            logger.warning("tune %s diverged: %s", point, err)
            score = float("nan")
        scored.append((point, score))
        logger.info("tune %s -> %.6g", point, score)
        if memo is not None:
            fits = (loop.block_names() or [])[before:]
            record = {"point": point, "score": score, "fits": fits}
            lines.append(json.dumps(record, sort_keys=True, default=str))
            write_atomic(memo, "\n".join(lines) + "\n")
    finite = [(p, s) for p, s in scored if np.isfinite(s)] or scored
    best, score = min(finite, key=lambda ps: ps[1] if np.isfinite(ps[1]) else np.inf)
    return Tuned(best=best, score=score, trials=scored)


def shared_choice(
    out: str | os.PathLike | None,
    cell: Cell,
    choose: Callable[[], Mapping[str, Any]],
    *,
    per_seed: bool = False,
) -> dict[str, Any]:
    """The hyperparameters of ``cell``'s (setting, method), chosen once for all its seeds.

    With ``per_seed`` (an experiment's ``tuning.per_seed``) or no run folder ``out`` it is
    ``choose()`` itself, every cell tuning on its own. Otherwise the first cell of a family
    to get here runs ``choose()`` (its tuning) and records the point in
    ``out/tuned/<family>.json``; the family's other seeds read it back, so a resumed run
    reuses the choice and its seeds differ only in their own seed. The curves of the tuning's
    fits (named in its ``tuning_memo``) stay with a cell that reads the choice back, as they
    do with one that resumes the tuning: the cell that tuned may have been killed after
    recording the choice and before it was written. Processes sharing ``out`` tune a
    family once: one holds ``tuned/<family>.lock`` while it tunes; another waits for the
    choice, or (in ``run_cells``'s first pass) raises ``TuningElsewhere`` to run other cells.
    """
    if per_seed or out is None:
        return dict(choose())
    path = Path(out) / TUNED / f"{cell.family}.json"
    if path.exists():
        best = json.loads(path.read_text())
        logger.info("%s: tuned earlier (%s), %s", cell.key, path.name, best)
        memo = tuning_memo(out, cell, per_seed=False)
        for line in memo.read_text().splitlines() if memo.exists() else []:
            loop.keep_curves(json.loads(line).get("fits"))
        return best
    if distributed.process_info().process_count == 1:
        with _locked(path.with_suffix(".lock"), wait=not _DEFER_TUNING.get()) as held:
            if not held:  # another process tunes it: run_cells comes back to this cell
                raise TuningElsewhere(cell.family)
            if path.exists():
                return shared_choice(out, cell, choose, per_seed=per_seed)
            return _choose_and_record(path, choose)
    return _choose_and_record(path, choose)


def _choose_and_record(path: Path, choose: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    """``choose()``, recorded in ``path`` (``tuned/<family>.json``)."""
    best = dict(choose())
    write_atomic(path, json.dumps(best, sort_keys=True) + "\n")
    return best


def hp_rows(best: Mapping[str, Any], **keys: Any) -> list[dict]:
    """Long-schema rows ``metric = hp:<name>`` for the chosen numeric hyperparameters."""
    return [
        dict(keys, group=keys.get("group", "all"), metric=f"hp:{name}", value=float(value))
        for name, value in best.items()
    ]
