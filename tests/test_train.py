"""Training utilities: results tables, significance tests, logs, checkpoints, the fit loop."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
import scipy.stats
from _resume_worker import make_problem

from dmeta import report
from dmeta.report import tables
from dmeta.train import checkpoint, harness, results
from dmeta.train.checkpoint import Checkpointer, load_config
from dmeta.train.logs import MetricsLog, scalar_metrics
from dmeta.train.loop import fit
from dmeta.train.state import TrainState, init_train_state

WORKER = Path(__file__).with_name("_resume_worker.py")
_problem = functools.cache(make_problem)  # compile each step function once


def _results_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for dataset in ("d1", "d2"):
        for group in ("all", "g|1"):
            for method in ("ours", "base"):
                for s in range(5):
                    for metric in ("mape", "rmse"):
                        shift = 0.0 if method == "ours" else 0.3
                        rows.append(
                            ("exp", dataset, method, group, s, metric, rng.random() + shift)
                        )
    return pd.DataFrame(rows, columns=list(results.COLUMNS))


def test_open_run_writes_command_and_config(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        lr: float = 0.1
        p: str = "x"

    harness.open_run(
        tmp_path / "run", Cfg(p=str(tmp_path)), data="synthetic", seeds=1, methods=("m",),
        command="dmeta run x --smoke", fresh=False,
    )  # fmt: skip
    assert (tmp_path / "run" / "command.txt").read_text() == "dmeta run x --smoke\n"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config == {
        "lr": 0.1,
        "p": str(tmp_path),
        "data": "synthetic",
        "seeds": 1,
        "methods": ["m"],
    }


def test_finish_writes_results_and_summary(tmp_path):
    df = _results_frame()
    harness.finish(tmp_path, df)
    summary = results.summarize(results.validate_results(df))
    back = pd.read_csv(tmp_path / "results.csv")
    assert list(back.columns) == list(results.COLUMNS)
    np.testing.assert_allclose(back["value"], df["value"])
    assert len(summary) == 2 * 2 * 2 * 2
    cell = df[(df.dataset == "d2") & (df.group == "all") & (df.method == "base")]
    cell = cell[cell.metric == "rmse"]["value"]
    row = summary[
        (summary.dataset == "d2")
        & (summary.group == "all")
        & (summary.method == "base")
        & (summary.metric == "rmse")
    ]
    np.testing.assert_allclose(row["mean"], cell.mean())
    np.testing.assert_allclose(row["std"], cell.std(ddof=1))
    assert row["n"].item() == 5
    assert (tmp_path / "results.md").read_text() == report.generic(df, "exp on d1, d2")
    md = report.generic(df, "T")
    lines = md.splitlines()
    assert lines[0] == "# T"
    assert "## exp" in lines
    header = next(line for line in lines if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "dataset",
        "group",
        "method",
        "mape",
        "rmse",
        "n",
    ]
    assert f"{cell.mean():.4g} ± {cell.std(ddof=1):.2g}" in md
    assert "g\\|1" in md  # pipes in cells are escaped
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 2 * 2 * 2  # header, rule, (dataset, group, method) rows
    assert len({len(line) for line in table}) == 1  # aligned columns


def test_summary_single_seed_and_nonfinite(tmp_path, caplog):
    df = _results_frame().query("seed == 0").reset_index(drop=True)
    df.loc[3, "value"] = np.nan
    harness.finish(tmp_path, df)
    summary = results.summarize(results.validate_results(df))
    assert "non-finite" in caplog.text
    assert summary["std"].isna().all()
    assert summary["n"].sum() == len(df) - 1
    assert "±" not in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("column", results.COLUMNS)
def test_finish_refuses_a_missing_column(tmp_path, column):
    with pytest.raises(ValueError, match=f"'{column}'"):
        harness.finish(tmp_path, _results_frame().drop(columns=column))
    assert not (tmp_path / "results.csv").exists()


def test_finish_refuses_bad_values_and_duplicates(tmp_path):
    df = _results_frame()
    df["value"] = df["value"].astype(object)
    df.loc[7, "value"] = "oops"
    with pytest.raises(ValueError, match="'value' row 7"):
        harness.finish(tmp_path, df)
    df = _results_frame()
    with pytest.raises(ValueError, match=r"rows \[0, 80\] repeat"):
        harness.finish(tmp_path, pd.concat([df, df.iloc[:1]]))


@pytest.mark.parametrize(
    ("test", "reference"), [("ttest", scipy.stats.ttest_rel), ("wilcoxon", scipy.stats.wilcoxon)]
)
def test_significance_table_matches_scipy(test, reference):
    df = _results_frame().sample(frac=1.0, random_state=0)  # pairing must not rely on order
    table = tables.significance_table(df, "ours", "base", "mape", test=test)
    assert list(table.columns) == [
        "dataset",
        "group",
        "mean_a",
        "mean_b",
        "diff",
        "statistic",
        "p_value",
        "n",
    ]
    assert len(table) == 4
    for row in table.itertuples():
        cell = df[(df.dataset == row.dataset) & (df.group == row.group) & (df.metric == "mape")]
        a = cell[cell.method == "ours"].sort_values("seed")["value"].to_numpy()
        b = cell[cell.method == "base"].sort_values("seed")["value"].to_numpy()
        ref = reference(a, b)
        np.testing.assert_allclose([row.statistic, row.p_value], [ref.statistic, ref.pvalue])
        np.testing.assert_allclose([row.mean_a, row.mean_b], [a.mean(), b.mean()])
        np.testing.assert_allclose(row.diff, a.mean() - b.mean())
        assert row.n == 5


def test_significance_table_pair_on_group_and_unpaired(caplog):
    df = _results_frame().query("seed == 0 and dataset == 'd1'")
    # per-segment scores stored in `group`; segment "g|1" is missing for method b.
    df = df[~((df.method == "base") & (df.group == "g|1"))]
    a0, b0 = df[(df.method == "ours") & (df.group == "all")], df[df.method == "base"]
    extra = [
        a0.assign(group="seg2"),
        b0.assign(group="seg2", value=lambda d: d["value"] + 1.0),
        b0.assign(group="seg3", value=lambda d: d["value"] + 2.0),
        a0.assign(group="seg3", value=lambda d: d["value"] * 0.5),
    ]
    df = pd.concat([df, *extra], ignore_index=True)
    table = tables.significance_table(df, "ours", "base", "rmse", by=(), pair_on="group")
    assert "without a pair" in caplog.text
    assert table["n"].tolist() == [3]
    sel = df[df.metric == "rmse"]
    a = sel[sel.method == "ours"].set_index("group")["value"]
    b = sel[sel.method == "base"].set_index("group")["value"]
    units = ["all", "seg2", "seg3"]
    ref = scipy.stats.ttest_rel(a[units], b[units])
    np.testing.assert_allclose(table[["statistic", "p_value"]].iloc[0], [ref.statistic, ref.pvalue])


def test_significance_table_errors():
    df = _results_frame()
    with pytest.raises(ValueError, match="no rows for method='nope'"):
        tables.significance_table(df, "ours", "nope", "mape")
    with pytest.raises(ValueError, match="aggregate"):
        tables.significance_table(df, "ours", "base", "mape", by=("dataset",))
    with pytest.raises(ValueError, match="pair_on"):
        tables.significance_table(df, "ours", "base", "mape", pair_on="group")
    with pytest.raises(ValueError, match="test must be"):
        tables.significance_table(df, "ours", "base", "mape", test="anova")


def test_significance_table_too_few_pairs(caplog):
    df = _results_frame().query("seed == 0")
    table = tables.significance_table(df, "ours", "base", "mape")
    assert table["p_value"].isna().all() and (table["n"] == 1).all()
    assert "no test" in caplog.text


def test_markdown_table():
    md = tables.markdown_table(pd.DataFrame({"a": ["x", "y|z"], "p": [0.123456, 1e-9]}))
    assert md.splitlines() == [
        "| a    | p      |",
        "| ---- | ------ |",
        "| x    | 0.1235 |",
        "| y\\|z | 1e-09  |",
    ]


# ---------------------------------------------------------------- checkpoints and logs


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("processes", [1, 2], ids=["one_process", "multi_process_path"])
@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(3)], ids=["typed", "raw"])
def test_checkpoint_round_trip(tmp_path, key, processes, monkeypatch):
    # with several processes the checkpoint holds numpy copies (keys as key data), which
    # orbax writes from process 0; here one process takes that path
    monkeypatch.setattr(checkpoint, "_multi_process", lambda: processes > 1)
    optimizer = optax.adam(0.1)
    state = init_train_state({"w": jnp.arange(3.0), "b": jnp.ones((2, 2))}, optimizer, key)
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    state = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 7, key)
    extra = {"best": np.float64(0.25), "count": 4, "flag": np.asarray(True)}
    with Checkpointer(tmp_path, max_to_keep=2, config={"lr": 0.1}) as ckpt:
        for step in (1, 2, 3):
            assert ckpt.save(step, {"state": state, "extra": extra})
        assert not ckpt.save(3, {"state": state, "extra": extra})
        assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
        target = {"state": init_train_state(state.params, optimizer, key), "extra": extra}
        back = ckpt.restore(target)
        with pytest.raises(FileNotFoundError):
            ckpt.restore(target, step=1)
    assert load_config(tmp_path) == {"lr": 0.1}
    assert int(back["state"].step) == 7
    assert float(back["extra"]["best"]) == 0.25 and bool(back["extra"]["flag"])
    _assert_trees_equal(back["state"], state)
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError):
        ckpt.restore(target)


def test_metrics_log_rows_and_restart(tmp_path, caplog):
    log = MetricsLog(tmp_path / "log.csv")
    log.restart(0)
    log.append({"step": 1, "loss": 1.0})
    log.append({"step": 2, "loss": 0.5, "val_loss": float("nan")})
    log.append({"step": 3, "loss": 0.25})
    assert "non-finite" in caplog.text
    csv = pd.read_csv(tmp_path / "log.csv")
    assert list(csv.columns) == ["step", "loss", "val_loss"]
    assert csv["loss"].tolist() == [1.0, 0.5, 0.25] and csv["val_loss"].isna().all()
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    again = MetricsLog(tmp_path / "log.jsonl")
    assert [r["step"] for r in again.restart(2)] == [1, 2]
    assert "truncated" in caplog.text
    assert pd.read_csv(tmp_path / "log.csv")["step"].tolist() == [1, 2]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nbad\n{"step": 2}\n')
    with pytest.raises(ValueError, match="log.jsonl:2"):
        MetricsLog(tmp_path / "log.jsonl").restart(5)


def test_scalar_metrics():
    out = scalar_metrics({"a": jnp.ones(()), "b": {"c": np.ones(1)}}, prefix="val_")
    assert out == {"val_a": 1.0, "val_b/c": 1.0}
    with pytest.raises(ValueError, match="val_x"):
        scalar_metrics({"x": jnp.ones(2)}, prefix="val_")


# ---------------------------------------------------------------- the fit loop


def _run(tmp_path, n_steps=30, key_kind="typed", **kwargs):
    step_fn, state, eval_fn = _problem(key_kind)
    defaults = dict(eval_fn=eval_fn, eval_every=4, progress=False)
    return fit(
        kwargs.pop("wrap", lambda f: f)(step_fn), state, n_steps=n_steps, **defaults | kwargs
    )


def test_fit_logs_rows_and_learns(tmp_path):
    res = _run(tmp_path, n_steps=30, log_path=tmp_path / "m.csv")
    assert int(res.state.step) == 30
    steps = [4, 8, 12, 16, 20, 24, 28, 30]
    assert [r["step"] for r in res.history] == steps
    assert res.history[-1]["val_loss"] < 0.5 * res.history[0]["val_loss"]
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == res.history
    csv = pd.read_csv(tmp_path / "m.csv")
    assert list(csv.columns) == ["step", "loss", "val_loss"] and csv["step"].tolist() == steps
    np.testing.assert_allclose(csv["val_loss"], [r["val_loss"] for r in rows])
    best = min(res.history, key=lambda r: r["val_loss"])
    assert res.best_step == best["step"]


def test_fit_traces_once_with_donation_and_shows_progress(tmp_path, capsys):
    step_fn, state, eval_fn = _problem("typed")
    traced = jax.jit(chex.assert_max_traces(lambda s: step_fn(s), n=1), donate_argnums=0)
    fresh = jax.tree.map(lambda x: x.copy(), state)  # donated by the first step
    res = fit(traced, fresh, n_steps=12, eval_fn=eval_fn, eval_every=3, desc="tiny", progress=True)
    ref = _run(tmp_path, n_steps=12, eval_every=3)
    _assert_trees_equal(res.best_state, ref.best_state)  # best_state survives donation
    _assert_trees_equal(res.state, ref.state)
    err = capsys.readouterr().err
    assert "tiny" in err and "/12 " in err  # the bar (cleared when the fit ends)


def test_fit_train_metric_is_interval_mean(tmp_path):
    step_fn, state, _ = _problem("typed")
    losses = []
    for _ in range(6):
        state, m = step_fn(state)
        losses.append(float(m["loss"]))
    res = _run(tmp_path, n_steps=6, eval_every=4, eval_fn=None)
    np.testing.assert_allclose(
        [r["loss"] for r in res.history], [np.mean(losses[:4]), np.mean(losses[4:])], rtol=1e-6
    )
    assert res.best_step == 6 and res.best_state is res.state


def test_fit_early_stopping_returns_best_state(tmp_path):
    def eval_fn(state):  # scripted validation curve with its minimum at step 12
        return {"val_loss": (state.step - 12.0) ** 2}

    res = _run(tmp_path, n_steps=100, eval_fn=eval_fn, patience=3)
    assert [r["step"] for r in res.history] == [4, 8, 12, 16, 20, 24]
    assert int(res.state.step) == 24 and res.best_step == 12
    reference = _run(tmp_path, n_steps=12, eval_fn=None)
    _assert_trees_equal(res.best_state, reference.state)
    with pytest.raises(ValueError, match="val_loss"):
        _run(tmp_path, eval_fn=lambda s: {"acc": 1.0}, patience=2)
    with pytest.raises(ValueError, match="patience"):
        _run(tmp_path, eval_fn=None, patience=2)


def _plateau_problem():
    """SGD whose gradient is always -1, so ``w`` grows by the learning rate each step, and a
    scripted validation curve with its minimum at step 12."""
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)

    @jax.jit
    def step_fn(state):
        updates, opt_state = optimizer.update({"w": -jnp.ones(())}, state.opt_state)
        params = optax.apply_updates(state.params, updates)
        return dataclasses.replace(
            state, params=params, opt_state=opt_state, step=state.step + 1
        ), {}

    state = init_train_state({"w": jnp.zeros(())}, optimizer, jax.random.key(0))
    return step_fn, state, lambda state: {"val_loss": (float(state.step) - 12.0) ** 2}


def test_reduce_on_plateau_cuts_the_learning_rate_then_stops_and_resumes_alike(tmp_path):
    """Patience 2 from the best step 12 runs out at 20: the learning rate drops tenfold and
    training goes on until patience runs out again at 28 (w = 20 x 1 + 8 x 0.1); a run
    stopped at 24 and resumed from its checkpoint ends the same way."""
    step_fn, state, eval_fn = _plateau_problem()
    opts = dict(eval_fn=eval_fn, eval_every=4, patience=2, progress=False, lr_decays=1)
    res = fit(step_fn, state, n_steps=100, **opts)
    assert [r["step"] for r in res.history] == [4, 8, 12, 16, 20, 24, 28]
    assert float(res.state.params["w"]) == pytest.approx(20.8)
    assert float(res.state.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    assert res.best_step == 12 and float(res.best_state.params["w"]) == pytest.approx(12.0)
    plain = fit(step_fn, state, n_steps=100, **dict(opts, lr_decays=0))
    assert int(plain.state.step) == 20  # without cuts the first plateau stops the run
    ckpt = dict(ckpt_dir=tmp_path / "c", ckpt_every=4)
    fit(step_fn, state, n_steps=24, **opts, **ckpt)
    resumed = fit(step_fn, state, n_steps=100, **opts, **ckpt)
    assert int(resumed.state.step) == 28
    assert float(resumed.state.params["w"]) == pytest.approx(20.8)
    with pytest.raises(ValueError, match="learning_rate"):
        _run(tmp_path, patience=2, lr_decays=1)  # plain optax.adam: no rate in its state


def _rows_problem():
    """Two models side by side on the leading axis: each step adds 1 to both rows'
    parameter, so a row's parameter is the step it was taken at; scripted validation
    curves with row 0's minimum at step 8 (and a lower value at step 28, after its patience
    has run out) and row 1's at step 20."""

    def step_fn(state):
        return dataclasses.replace(state, params=state.params + 1, step=state.step + 1), {}

    def eval_fn(state):
        row0 = jnp.where(state.step == 28, -1.0, (state.step - 8.0) ** 2)
        return {"val_loss": jnp.stack([row0, (state.step - 20.0) ** 2])}

    state = TrainState(jnp.zeros(2), jnp.zeros(2), jnp.zeros((), jnp.int32), jnp.zeros(2))
    return step_fn, state, eval_fn


def test_fit_rows_early_stop_one_by_one(tmp_path):
    step_fn, state, eval_fn = _rows_problem()
    opts = dict(n_steps=100, eval_fn=eval_fn, eval_every=4, patience=3, rows=2, progress=False)
    res = fit(step_fn, state, log_path=tmp_path / "m.csv", **opts)
    # row 0 stops after 3 evaluations past step 8 (at 20); the run when row 1 does (at 32)
    assert [r["step"] for r in res.history] == list(range(4, 33, 4))
    np.testing.assert_array_equal(res.best_state.params, [8.0, 20.0])
    assert res.best_step == 20 and int(res.state.step) == 32
    # row 0's value at step 28 is its lowest, but it came after row 0 had stopped
    assert res.history[-2]["val_loss/0"] == -1.0
    row = res.history[-1]
    assert row["val_loss/0"] == 24.0**2 and row["val_loss/1"] == 12.0**2
    assert row["val_loss"] == (24.0**2 + 12.0**2) / 2  # the mean, the curve's column
    assert list(pd.read_csv(tmp_path / "m.csv").columns) == [
        "step", "val_loss", "val_loss/0", "val_loss/1"
    ]  # fmt: skip
    # a killed run resumes to the same best rows
    run = dict(opts, ckpt_dir=tmp_path / "ckpt", ckpt_every=4)
    with pytest.raises(_Crash):
        fit(_crash_at(14)(step_fn), state, **run)
    again = fit(step_fn, state, **run)
    np.testing.assert_array_equal(again.best_state.params, [8.0, 20.0])
    assert again.best_step == 20 and int(again.state.step) == 32
    # evaluations up to step 24 do not count against patience: row 0, best at 8, still runs
    # at 28 (its lowest) and stops 3 evaluations later; row 1 stops at 36
    held = fit(step_fn, state, **dict(opts, patience_from=24))
    np.testing.assert_array_equal(held.best_state.params, [28.0, 20.0])
    assert int(held.state.step) == 40
    # without a monitored value every row's best is its last state
    last = fit(step_fn, state, n_steps=6, eval_every=3, rows=2, progress=False)
    np.testing.assert_array_equal(last.best_state.params, [6.0, 6.0])


class _Crash(Exception):
    pass


def _crash_at(step: int):
    def wrap(step_fn):
        def f(state):
            if not isinstance(state.step, jax.core.Tracer) and int(state.step) == step:
                raise _Crash
            return step_fn(state)

        return f

    return wrap


@pytest.mark.parametrize("key_kind", ["typed", "raw"])
def test_fit_resume_after_exception_is_bit_identical(tmp_path, key_kind):
    kwargs = dict(n_steps=40, key_kind=key_kind, patience=50, ckpt_every=5)
    ref = _run(tmp_path, log_path=tmp_path / "ref.csv", **kwargs)
    run = dict(ckpt_dir=tmp_path / "ckpt", log_path=tmp_path / "run.csv", **kwargs)
    with pytest.raises(_Crash):
        _run(tmp_path, wrap=_crash_at(23), **run)
    assert Checkpointer(tmp_path / "ckpt").latest_step() == 20
    res = _run(tmp_path, **run)
    _assert_trees_equal(res.state, ref.state)
    _assert_trees_equal(res.best_state, ref.best_state)
    assert res.best_step == ref.best_step
    assert res.history == ref.history
    assert (tmp_path / "run.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()
    assert (tmp_path / "run.csv").read_text() == (tmp_path / "ref.csv").read_text()
    again = _run(tmp_path, wrap=_crash_at(0), **run)  # finished: restores, runs no step
    _assert_trees_equal(again.state, ref.state)


def test_fit_resume_after_early_stop_runs_no_step(tmp_path):
    def eval_fn(state):
        return {"val_loss": (state.step - 12.0) ** 2}

    run = dict(n_steps=100, eval_fn=eval_fn, patience=3, ckpt_dir=tmp_path / "c", ckpt_every=10)
    first = _run(tmp_path, **run)
    again = _run(tmp_path, wrap=_crash_at(-1), **run)
    assert int(again.state.step) == 24 and again.best_step == 12
    _assert_trees_equal(again.best_state, first.best_state)


def test_fit_resume_after_sigkill_is_bit_identical(tmp_path):
    n_steps, ckpt = 40, tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = [
        sys.executable,
        str(WORKER),
        str(ckpt),
        str(tmp_path / "run.csv"),
        str(n_steps),
        "typed",
    ]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 45
        while not any(p.name.isdigit() and int(p.name) >= 10 for p in ckpt.glob("*")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "worker wrote no checkpoint in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = Checkpointer(ckpt).latest_step()
    assert 10 <= killed_at < n_steps
    res = _run(
        tmp_path, n_steps=n_steps, ckpt_dir=ckpt, ckpt_every=5, log_path=tmp_path / "run.csv"
    )
    ref = _run(tmp_path, n_steps=n_steps, log_path=tmp_path / "ref.csv")
    _assert_trees_equal(res.state, ref.state)
    _assert_trees_equal(res.best_state, ref.best_state)
    assert (tmp_path / "run.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()


def test_fit_stops_on_a_non_finite_loss_naming_the_steps(tmp_path):
    from dmeta.train.loop import NonFiniteError

    step_fn, state, eval_fn = make_problem(lr=1e30)  # diverges to inf, then NaN
    with pytest.raises(
        NonFiniteError, match=r"diverging: train metrics .*not finite in steps \d+-\d+"
    ) as info:
        fit(step_fn, state, n_steps=200, eval_every=10, desc="diverging", progress=False,
            log_path=tmp_path / "curve.csv")  # fmt: skip
    # the curve ends with the row that diverged, at the steps the error names
    last = pd.read_csv(tmp_path / "curve.csv").iloc[-1]
    assert not np.isfinite(last["loss"]) and f"-{int(last['step'])};" in str(info.value)
