"""The method harness: resumable cells, refusal of a foreign run folder, equal tuning."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import threading

import jax
import numpy as np
import pandas as pd
import pytest

from dmeta.config import flatten
from dmeta.train import harness
from dmeta.train.harness import Cell, RunError


@dataclasses.dataclass(frozen=True)
class Toy:
    k: int = 1
    j: int = 2


def _open(path, cfg=Toy(), *, data="synthetic", seeds=2, fresh=False):
    return harness.open_run(
        path, cfg, data=data, seeds=seeds, methods=("a",), command="x", fresh=fresh
    )


def _rows(cell: Cell, value: float) -> list[dict]:
    keys = dict(experiment="t", dataset="d", method=cell.method, seed=cell.seed)
    return [dict(keys, group="all", metric="mse", value=value)]


def test_cells_resume_to_the_same_results(tmp_path):
    cells = [Cell(m, s) for m in ("a", "b/c") for s in range(2)]
    calls = []

    def run_cell(cell):
        calls.append(cell)
        return _rows(cell, float(len(cell.method) + cell.seed))

    _open(tmp_path)
    full = harness.run_cells(tmp_path, cells, run_cell)
    assert len(calls) == 4 and len(full) == 4
    (tmp_path / "cells" / f"{cells[2].key}.csv").unlink()  # as if killed before this cell
    calls.clear()
    _open(tmp_path)
    resumed = harness.run_cells(tmp_path, cells, run_cell)
    assert calls == [cells[2]]
    pd.testing.assert_frame_equal(resumed, full)
    _open(tmp_path, fresh=True)
    calls.clear()
    harness.run_cells(tmp_path, cells, run_cell)
    assert len(calls) == 4


def test_a_killed_cell_resumes_inside_its_training(tmp_path):
    """The harness checkpoints every fit of a cell: a cell interrupted in its second fit
    restores the first without a step and continues the second from its last checkpoint;
    the cell's checkpoints go when it is written, its curves stay, --fresh removes both."""
    from _resume_worker import make_problem

    from dmeta.train import loop

    step_fn, state, eval_fn = make_problem()
    steps_run, crash = [], {"after": 16 + 13}  # at step 13 of the second fit

    def counted(s):
        if not isinstance(s.step, jax.core.Tracer):
            steps_run.append(int(s.step))
            if len(steps_run) > crash["after"]:
                raise KeyboardInterrupt
        return step_fn(s)

    def run_cell(cell):
        losses = []
        for name in ("first", "second"):
            res = loop.fit(counted, state, n_steps=16, eval_fn=eval_fn, eval_every=4,
                           ckpt_every=4, desc=name, progress=False)  # fmt: skip
            losses.append(res.history[-1]["val_loss"])
        return _rows(cell, sum(losses))

    cell = Cell("m", 0)
    _open(tmp_path, seeds=1)
    with pytest.raises(KeyboardInterrupt):
        harness.run_cells(tmp_path, [cell], run_cell)
    (tmp_path / "curves" / cell.key / "009-gone-12345678.csv").write_text("step\n")
    assert steps_run[-1] == 13 and len(steps_run) == 16 + 14
    steps_run.clear()
    crash["after"] = np.inf
    resumed = harness.run_cells(tmp_path, [cell], run_cell)
    assert steps_run == [12, 13, 14, 15]  # nothing of the first fit, the second from 12
    assert not (tmp_path / "ckpt" / cell.key).exists()
    curves = sorted(p.name[:10] for p in (tmp_path / "curves" / cell.key).glob("*.csv"))
    assert curves == ["000-first-", "001-second"]  # a stale curve of the first try is gone
    whole = harness.run_cells(tmp_path / "whole", [cell], run_cell)
    pd.testing.assert_frame_equal(resumed, whole)
    _open(tmp_path, seeds=1, fresh=True)
    assert not (tmp_path / "curves").exists() and not (tmp_path / "cells").exists()


def test_curves_of_recorded_tuning_points_stay_with_a_resumed_cell(tmp_path):
    """A cell killed while tuning its second point resumes without refitting the first
    (recorded in the memo with the names of its fits), and keeps the first point's curve
    when it ends; only curves of fits no try of the cell finished are removed."""
    from _resume_worker import make_problem

    from dmeta.train import loop

    step_fn, state, eval_fn = make_problem()
    kill = {"at": 2.0}

    def run_cell(cell):
        def evaluate(point):
            if point["lr"] == kill["at"]:
                raise KeyboardInterrupt
            res = loop.fit(step_fn, state, n_steps=8, eval_fn=eval_fn, eval_every=4,
                           desc=f"lr={point['lr']:g}", progress=False)  # fmt: skip
            return res.history[-1]["val_loss"] + point["lr"]

        memo = harness.tuning_memo(tmp_path, cell, per_seed=False)
        return _rows(cell, harness.tune({"lr": [1.0, 2.0]}, evaluate, memo=memo).score)

    cell = Cell("m", 0)
    _open(tmp_path, seeds=1)
    with pytest.raises(KeyboardInterrupt):
        harness.run_cells(tmp_path, [cell], run_cell)
    record = json.loads(harness.tuning_memo(tmp_path, cell, per_seed=False).read_text())
    assert [n[:9] for n in record["fits"]] == ["000-lr=1-"]
    kill["at"] = None
    harness.run_cells(tmp_path, [cell], run_cell)
    curves = sorted(p.name[:9] for p in (tmp_path / "curves" / cell.key).glob("*.csv"))
    assert curves == ["000-lr=1-", "000-lr=2-"]  # the first try's curve and the resumed one


def test_curves_of_a_finished_tuning_stay_when_its_cell_is_rerun(tmp_path):
    """A cell killed after its tuning recorded the choice (``tuned/<family>.json``) and
    before the cell was written reads the choice back on resume and keeps the tuning's
    curves: only the interrupted final fit's curve is stale."""
    from _resume_worker import make_problem

    from dmeta.train import loop

    step_fn, state, eval_fn = make_problem()
    kill = {"final": True}

    def fit(desc):
        res = loop.fit(step_fn, state, n_steps=8, eval_fn=eval_fn, eval_every=4, desc=desc,
                       progress=False)  # fmt: skip
        return res.history[-1]["val_loss"]

    def run_cell(cell):
        def choose():
            memo = harness.tuning_memo(tmp_path, cell, per_seed=False)
            grid = {"lr": [1.0, 2.0]}
            return harness.tune(grid, lambda p: fit(f"lr={p['lr']:g}") + p["lr"], memo=memo).best

        best = harness.shared_choice(tmp_path, cell, choose)
        if kill["final"]:
            (tmp_path / "curves" / cell.key / "009-final-12345678.csv").write_text("step\n")
            raise KeyboardInterrupt
        return _rows(cell, fit("final") + best["lr"])

    cell = Cell("m", 0)
    _open(tmp_path, seeds=1)
    with pytest.raises(KeyboardInterrupt):
        harness.run_cells(tmp_path, [cell], run_cell)
    kill["final"] = False
    harness.run_cells(tmp_path, [cell], run_cell)
    curves = sorted(p.name[:9] for p in (tmp_path / "curves" / cell.key).glob("*.csv"))
    assert curves == ["000-final", "000-lr=1-", "001-lr=2-"]


def test_fresh_removes_the_experiments_own_outputs(tmp_path):
    _open(tmp_path)
    (tmp_path / "forecasts").mkdir()
    (tmp_path / "forecasts" / "a.csv").write_text("x")
    (tmp_path / "reps.csv").write_text("x")
    (tmp_path / "mine.txt").write_text("x")  # not the run's: kept
    harness.open_run(tmp_path, Toy(), data="synthetic", seeds=2, methods=("a",), command="x",
                     fresh=True, outputs=("forecasts", "reps.csv"))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["command.txt", "config.json", "mine.txt"]


def test_foreign_config_is_refused(tmp_path):
    _open(tmp_path)
    harness.run_cells(tmp_path, [Cell("a", 0)], lambda c: _rows(c, 1.0))
    with pytest.raises(RunError, match="k differ.*--fresh"):
        _open(tmp_path, Toy(k=2))
    with pytest.raises(RunError, match="data differ"):
        _open(tmp_path, data="table:other.csv")
    assert json.loads((tmp_path / "config.json").read_text())["k"] == 1
    _open(tmp_path, seeds=5)  # more seeds: new cells, the finished ones kept


def test_finish_writes_csv_and_report(tmp_path):
    rows = harness.run_cells(tmp_path, [Cell("a", 0), Cell("b", 0)], lambda c: _rows(c, 2.0))
    harness.finish(tmp_path, rows)
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
    assert "| d" in (tmp_path / "results.md").read_text()


def test_grid_points_keep_the_default_first_and_respect_trials():
    grid = {"lr": [1e-3, 1e-2, 1e-1], "steps": [1, 3]}
    assert len(harness.grid_points(grid)) == 6
    some = harness.grid_points(grid, trials=3, seed=1)
    assert len(some) == 3 and some[0] == {"lr": 1e-3, "steps": 1}
    assert harness.grid_points(grid, trials=3, seed=1) == some
    assert harness.grid_points(grid, trials=1) == [{"lr": 1e-3, "steps": 1}]


def test_tune_picks_the_lowest_finite_validation_score():
    grid = {"lr": [1.0, 2.0, 3.0, 4.0]}
    scores = {1.0: 5.0, 2.0: float("nan"), 3.0: 1.0, 4.0: 1.0}
    tuned = harness.tune(grid, lambda p: scores[p["lr"]])
    assert tuned.best == {"lr": 3.0} and tuned.score == 1.0 and len(tuned.trials) == 4
    rows = harness.hp_rows(tuned.best, experiment="t", dataset="d", method="m", seed=0)
    assert rows == [
        dict(
            experiment="t", dataset="d", method="m", seed=0, group="all", metric="hp:lr", value=3.0
        )
    ]


def test_tune_scores_a_diverging_point_as_lost():
    from dmeta.train.loop import NonFiniteError, check_finite

    def evaluate(point):
        check_finite(np.array([1.0, np.inf if point["lr"] > 0.5 else 1.0]), "toy")  # lr 1 diverges
        return point["lr"] + 1.0

    tuned = harness.tune({"lr": [1.0, 0.0]}, evaluate)
    assert tuned.best == {"lr": 0.0} and np.isnan(tuned.trials[0][1])
    with pytest.raises(NonFiniteError, match=r"toy: the loss is not finite from row 1, step 3"):
        check_finite(np.array([[1.0] * 4, [1.0, 1.0, 1.0, np.nan]]), "toy")


def test_tune_resumes_from_recorded_scores_without_refitting(tmp_path):
    memo = harness.tuning_memo(tmp_path, harness.Cell("m", 0, "s"), per_seed=False)
    assert memo == tmp_path / "tuned" / "s__m.trials.jsonl"
    assert harness.tuning_memo(tmp_path, harness.Cell("m", 2, "s"), per_seed=True).name == (
        "s__m__seed2.trials.jsonl"
    )
    grid, scores, evaluated = {"lr": [1.0, 2.0, 3.0], "h": [(8, 8)]}, {1.0: 3.0, 2.0: 1.0}, []

    def killed_at_third(point):  # a run killed while fitting the third point
        if point["lr"] == 3.0:
            raise KeyboardInterrupt
        evaluated.append(point["lr"])
        return scores[point["lr"]]

    with pytest.raises(KeyboardInterrupt):
        harness.tune(grid, killed_at_third, memo=memo)
    assert evaluated == [1.0, 2.0] and len(memo.read_text().splitlines()) == 2

    def resumed(point):
        evaluated.append(point["lr"])
        return 2.0

    tuned = harness.tune(grid, resumed, memo=memo)
    assert evaluated == [1.0, 2.0, 3.0]  # only the third point is fitted again
    assert tuned.best == {"lr": 2.0, "h": (8, 8)} and tuned.score == 1.0
    assert [s for _, s in tuned.trials] == [3.0, 1.0, 2.0]
    assert harness.tune(grid, lambda p: pytest.fail("all recorded"), memo=memo).best == tuned.best


def _folder_saved_before(tmp_path, cfg, key: str) -> dict:
    """A run folder with one cell whose config.json lacks ``key`` (the folder of a run from
    before the field); returns that saved config."""
    _open(tmp_path, cfg)
    harness.run_cells(tmp_path, [Cell("a", 0)], lambda c: _rows(c, 1.0))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    return saved


def test_an_old_run_folder_resumes_after_a_config_field_with_default_none_is_added(tmp_path):
    """A folder written before ``train.strata`` existed (no such key in its config.json)
    keeps its cells: a missing field reads as None, the new field's default."""
    from dmeta.rmldp.config import get_config

    cfg = get_config(smoke=True)
    _folder_saved_before(tmp_path, cfg, "train.strata")
    _open(tmp_path, cfg)
    assert json.loads((tmp_path / "config.json").read_text())["train.strata"] is None
    with pytest.raises(RunError, match="train.strata differ"):
        _open(tmp_path, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, strata=2)))


def test_an_old_run_folder_resumes_after_a_field_is_added_at_its_class_default(tmp_path):
    """A folder saved before ``protocol.selection`` existed resumes while the field keeps
    its class default ("mean", the behaviour before it), and is refused with another value."""
    from dmeta.rmldp.config import get_config

    cfg = get_config(smoke=True)
    saved = _folder_saved_before(tmp_path, cfg, "protocol.selection")
    _open(tmp_path, cfg)
    assert json.loads((tmp_path / "config.json").read_text())["protocol.selection"] == "mean"
    (tmp_path / "config.json").write_text(json.dumps(saved))  # without the field again
    median = dataclasses.replace(
        cfg, protocol=dataclasses.replace(cfg.protocol, selection="median")
    )
    with pytest.raises(RunError, match="protocol.selection differ"):
        _open(tmp_path, median)


@pytest.mark.parametrize(
    "module, section, field, old_value",
    [
        ("dmeta.rmldp.config", "train", "task_scaling", "segment"),
        ("dmeta.sales_cnn.config", "train", "region_stopping", "shared"),
        ("dmeta.stmp.config", "protocol", "closed_days", "zero"),
        ("dmeta.stmp.config", "train", "min_steps", 0),
    ],
)
def test_a_field_added_with_a_new_default_refuses_old_folders_at_that_default(
    tmp_path, module, section, field, old_value
):
    """A field that came with a new behaviour as its default (RMLDP's ``train.task_scaling``,
    "support"; Sales CNN's ``train.region_stopping``, "per_region"): a folder saved before it
    ran the old one (the config class's ``BEFORE_ADDED``), so it resumes only with the old
    value, never silently under the new default."""
    cfg = importlib.import_module(module).get_config(smoke=True)
    key = f"{section}.{field}"
    assert type(cfg).BEFORE_ADDED[key] == old_value != flatten(cfg)[key]
    _folder_saved_before(tmp_path, cfg, key)
    with pytest.raises(RunError, match=f"{key} differ"):
        _open(tmp_path, cfg)
    part = dataclasses.replace(getattr(cfg, section), **{field: old_value})
    _open(tmp_path, dataclasses.replace(cfg, **{section: part}))
    assert json.loads((tmp_path / "config.json").read_text())[key] == old_value


def test_results_are_rebuilt_from_the_cells_in_run_order(tmp_path):
    from dmeta import report

    _open(tmp_path)
    cells = [Cell("b", 0), Cell("a", 0), Cell("a", 1)]
    rows = harness.run_cells(tmp_path, cells, lambda c: _rows(c, float(c.seed)))
    harness.finish(tmp_path, rows)
    assert (tmp_path / "cells" / "order.txt").read_text().split() == [c.key for c in cells]
    pd.testing.assert_frame_equal(harness.read_cells(tmp_path), rows)
    (tmp_path / "results.csv").unlink()
    pd.testing.assert_frame_equal(report.read_results(tmp_path), rows)
    assert report.run_dirs(tmp_path) == [tmp_path]
    (tmp_path / "cells" / f"{cells[2].key}.csv").unlink()  # a run in progress: no run folder
    assert report.run_dirs(tmp_path) == []


def test_shared_choice_tunes_once_per_method_and_setting(tmp_path):
    _open(tmp_path)
    calls = []

    def choose(value):
        calls.append(value)
        return {"lr": value, "width": 64}

    first = harness.shared_choice(tmp_path, Cell("a", 0, "full"), lambda: choose(0.01))
    again = harness.shared_choice(tmp_path, Cell("a", 1, "full"), lambda: choose(0.1))
    other = harness.shared_choice(tmp_path, Cell("a", 1, "one_week"), lambda: choose(0.1))
    assert first == again == {"lr": 0.01, "width": 64} and other["lr"] == 0.1
    assert calls == [0.01, 0.1] and isinstance(again["width"], int)
    assert (tmp_path / harness.TUNED / "full__a.json").exists()
    _open(tmp_path, fresh=True)
    assert not (tmp_path / harness.TUNED).exists()


WORKER = """
import os, sys, time
from pathlib import Path
from dmeta.train import harness
from dmeta.train.harness import Cell

out = Path(sys.argv[1])
log = out / "calls.log"

def note(text):
    with open(log, "a") as f:
        f.write(f"{text} {os.getpid()}\\n")

def choose(cell):
    note(f"tune {cell.family}")
    time.sleep(3)
    return {"lr": 1}

def run_cell(cell):
    best = harness.shared_choice(out, cell, lambda: choose(cell))
    note(f"run {cell.key}")
    time.sleep(0.4)
    keys = dict(experiment="t", dataset="d", method=cell.method, seed=cell.seed)
    return [dict(keys, group="all", metric="mse", value=float(best["lr"] + cell.seed))]

cells = [Cell(m, s) for m in ("a", "b") for s in range(3)]  # method-major: tunings first
rows = harness.run_cells(out, cells, run_cell)
rows.to_csv(out / f"rows_{os.getpid()}.csv", index=False)
"""


def test_processes_sharing_a_folder_run_each_cell_and_tune_families_apart(tmp_path):
    _open(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), str(tmp_path)]) for _ in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    calls = [line.split() for line in (tmp_path / "calls.log").read_text().splitlines()]
    runs = sorted(c[1] for c in calls if c[0] == "run")
    assert runs == sorted(f"main__{m}__seed{s}" for s in range(3) for m in "ab")
    tunes = sorted((c[1], c[2]) for c in calls if c[0] == "tune")
    assert [t[0] for t in tunes] == ["main__a", "main__b"]
    assert tunes[0][1] != tunes[1][1]  # the second process tuned b while the first tuned a
    assert len({c[2] for c in calls if c[0] == "run"}) == 2  # both processes ran cells
    first, second = (pd.read_csv(p) for p in sorted(tmp_path.glob("rows_*.csv")))
    pd.testing.assert_frame_equal(first, second)
    assert len(first) == 6 and not list((tmp_path / "cells").glob("*.claim"))


def test_a_cell_held_by_a_process_that_dies_is_run_after_the_others(tmp_path):
    _open(tmp_path)
    cells = [Cell("a", s) for s in range(3)]
    calls = []
    held, release = threading.Event(), threading.Event()

    def other_process():  # holds cell 0 and dies before writing it
        with harness.claim(tmp_path / "cells", cells[0], wait=False) as mine:
            assert mine
            held.set()
            release.wait(timeout=30)

    def run_cell(cell):
        calls.append(cell.seed)
        release.set()
        return _rows(cell, float(cell.seed))

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(timeout=30)
    rows = harness.run_cells(tmp_path, cells, run_cell)
    thread.join()
    assert calls == [1, 2, 0] and rows["seed"].tolist() == [0, 1, 2]


def test_held_by_others_sees_live_claims_only(tmp_path):
    folder = tmp_path / "cells"
    held, mine, stale = Cell("a", 0), Cell("a", 1), Cell("a", 2)
    folder.mkdir()
    (folder / f"{stale.key}{harness.CLAIM}").write_text("host:1\n")  # its process died
    with harness.claim(folder, held, wait=False), harness.claim(folder, mine, wait=False):
        assert harness.held_by_others(folder, mine) == {held.key}
        with harness.claim(folder, stale, wait=False) as taken:  # not locked: free to take
            assert taken
    assert harness.held_by_others(folder, mine) == set()


def test_time_left_takes_each_family_from_its_last_cell():
    tuned, fitted = Cell("a", 0), Cell("a", 1)  # seed 0 tuned the shared choice
    seconds = {tuned: 400.0, fitted: 100.0, Cell("b", 0): 40.0}
    to_run = [Cell("a", 2), Cell("a", 3), Cell("b", 1), Cell("c", 0)]
    # a: 2 x its last cell (100), b: 40, c (not timed yet): the median of all (100)
    assert harness.time_left(seconds, to_run) == 2 * 100 + 40 + 100
    assert harness.time_left(seconds, []) == 0


def test_interim_report_of_a_run_in_progress(tmp_path):
    from dmeta import report

    cells = [Cell("a", 0), Cell("a", 1), Cell("b", 0)]
    _open(tmp_path)
    harness.run_cells(tmp_path, cells, lambda c: _rows(c, 1.0 + c.seed))
    (tmp_path / "cells" / f"{cells[1].key}.csv").unlink()  # still to run
    assert harness.progress(tmp_path) == (2, 3)
    rows = harness.read_cells(tmp_path, finished=True)
    assert rows[["method", "seed"]].values.tolist() == [["a", 0], ["b", 0]]
    with pytest.raises(
        FileNotFoundError, match=r"1 of 3 cells not written yet \(first: main__a__seed1.csv\)"
    ):
        report.read_results(tmp_path)  # a comparison of an unfinished run: one clear line
    text = report.interim(tmp_path)
    assert text.splitlines()[2].startswith("Interim: 2 of 3 cells written")
    assert "| a " in text and "| b " in text and not (tmp_path / "results.md").exists()
    for cell in cells:
        (tmp_path / "cells" / f"{cell.key}.csv").unlink(missing_ok=True)
    assert report.interim(tmp_path).startswith("Interim: 0 of 3 cells")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        harness.progress(tmp_path / "elsewhere")
