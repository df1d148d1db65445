"""The STMP pipeline at smoke size: cells, resume, tuning on validation data, report."""

import numpy as np
import pandas as pd
import pytest

from dmeta import report
from dmeta.config import override
from dmeta.stmp import protocol as P
from dmeta.stmp.config import get_config
from dmeta.train.harness import Cell
from experiments import stmp as E
from experiments import stmp_followup, stmp_gap

METHODS = ("STMP", "HistAvg", "ARIMA")


@pytest.fixture(scope="module")
def cfg():
    return override(get_config(smoke=True), ["protocol.one_week=false", "train.n_steps=5"])


@pytest.fixture(scope="module")
def whole(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    results = E.run(cfg, data="synthetic", out=out, seeds=1, methods=METHODS, fresh=False,
                    command="test")  # fmt: skip
    return out, results


def test_run_writes_results_report_and_plot(whole):
    out, results = whole
    scores = results[~results.metric.str.startswith("hp:")]
    assert set(scores.method) == set(METHODS)
    assert {"full/regular", "full/festival"} <= set(scores.group)
    assert np.isfinite(results.value).all()
    hp = results[results.metric == "hp:train.lr"]
    assert hp.value.tolist() == [3e-3]  # tuning.trials = 1: the config's value
    md = (out / "results.md").read_text()
    assert md == report.render(out)
    assert "STMP vs best baseline" in md and "full/festival" in md
    assert (out / "stmp_festivals.png").stat().st_size > 1000
    assert len(list((out / P.FORECASTS).glob("*.csv"))) == len(METHODS)


def test_resumed_run_after_losing_a_cell_is_identical(cfg, whole, tmp_path):
    out, results = whole
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for path in out.rglob("*"):  # a copy of the finished run, minus STMP's cell
        if path.is_file():
            target = resumed / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (resumed / "cells" / "full__STMP__seed0.csv").unlink()
    again = E.run(cfg, data="synthetic", out=resumed, seeds=1, methods=METHODS, fresh=False,
                  command="test")  # fmt: skip
    pd.testing.assert_frame_equal(again, results)
    assert (resumed / "results.csv").read_text() == (out / "results.csv").read_text()


def test_test_forecasts_hold_every_scored_target_and_split_the_gap(cfg, tmp_path):
    """With ``protocol.test_forecasts`` each cell's file reproduces its scored MSEs, and
    ``experiments.stmp_gap`` splits two methods' regular-day gap into shares that add up."""
    cfg = override(cfg, ["protocol.test_forecasts=true"])
    results = E.run(cfg, data="synthetic", out=tmp_path, seeds=1, methods=("ARIMA", "HistAvg"),
                    fresh=False, command="test")  # fmt: skip
    frame = pd.read_csv(tmp_path / P.FORECASTS / "full__ARIMA__seed0.test.csv.gz")
    assert frame.date_type.notna().all() and frame.duplicated(["region", "date"]).sum() == 0
    for kind, rows in frame.groupby(frame.festival.map({True: "festival", False: "regular"})):
        mse = ((rows.actual - rows.forecast) ** 2).mean()
        row = results[(results.method == "ARIMA") & (results.group == f"full/{kind}")
                      & (results.metric == "mse")]  # fmt: skip
        np.testing.assert_allclose(mse, row.value.item(), rtol=1e-5)
    both = stmp_gap.paired(tmp_path, "ARIMA", "HistAvg")
    assert not both.festival.any() and len(both) == (~frame.festival).sum()
    keys = ("month", "weekday", "near_festival", "store_size", "window_gaps", "low_days")
    for key in (*keys, "error_size"):
        table = stmp_gap.breakdown(both, key, "ARIMA", "HistAvg")
        np.testing.assert_allclose(table["share of gap"].sum(), 1.0)
        np.testing.assert_allclose(table.targets.sum(), 1.0)
    days = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-05"])
    toy = pd.DataFrame({"seed": 0, "region": "a", "date": days})
    assert stmp_gap.window_gaps(toy, window=3).tolist() == [0, 0, 1, 1]  # Jan 3 missing
    toy["actual"] = [100, 10, 100, 100]  # Jan 2 below 0.4 of the median (100)
    assert stmp_gap.low_days(toy, window=2).tolist() == [0, 0, 1, 0]  # Jan 2 in Jan 4's 2
    stmp_gap.main([str(tmp_path), "--method", "ARIMA", "--against", "HistAvg"])
    assert "By test month" in (tmp_path / "gap.md").read_text()
    assert (tmp_path / "gap.png").stat().st_size > 1000


def test_tuning_scores_grid_points_on_the_validation_period(cfg):
    _, data = P.load_panel("synthetic", cfg.data)
    cell = Cell("ARIMA", 0, "full")
    tuned = override(cfg, ["tuning.trials=3"])
    best = P.choose(cell, data, tuned)
    assert set(best) == {"baselines.arima_lags"} and best["baselines.arima_lags"] in (14, 7, 28)
    val, test = P.split(data, cfg, "full", True), P.split(data, cfg, "full", False)
    assert not (val.test & test.test).any() and not (val.train & test.test).any()
    assert np.flatnonzero(val.test.any(0)).max() < np.flatnonzero(test.test.any(0)).min()
    for prep in (val, test):  # early stopping on the days right before the scored period
        days = np.flatnonzero(prep.val.any(0))
        assert days.size == cfg.protocol.val_days and not (prep.val & prep.train).any()
        assert days.max() + 1 == np.flatnonzero(prep.test.any(0)).min()
        assert np.flatnonzero(prep.train.any(0)).max() < days.min()
    assert P.choose(cell, data, cfg) == {"baselines.arima_lags": 14}
    stmp_grid = {"train.lr", "train.beta", "train.n_context", "model.hidden", "train.n_tasks"}
    assert set(P.TUNED["STMP"]) == stmp_grid


def test_one_week_setting_skips_the_ablations():
    cells = P.cells(get_config(smoke=True), P.METHODS, 2)
    one_week = {c.method for c in cells if c.setting == "one_week"}
    assert one_week == set(P.ONE_WEEK_METHODS) and "STMP-joint" not in one_week
    assert len(cells) == 2 * (len(P.METHODS) + len(P.ONE_WEEK_METHODS))
    only_week = P.cells(override(get_config(smoke=True), ["protocol.full=false"]), P.METHODS, 2)
    assert only_week == [c for c in cells if c.setting == "one_week"]
    neither = override(get_config(smoke=True), ["protocol.full=false", "protocol.one_week=false"])
    with pytest.raises(ValueError, match="no setting"):
        P.cells(neither, P.METHODS, 2)


def test_shared_tuning_tunes_the_first_seed_and_reuses_its_choice(cfg, tmp_path, monkeypatch):
    shared = override(cfg, ["tuning.trials=3", "tuning.per_seed=false"])
    calls = []
    choose = P.choose
    monkeypatch.setattr(P, "choose", lambda cell, *a: calls.append(cell.seed) or choose(cell, *a))
    results = E.run(shared, data="synthetic", out=tmp_path, seeds=2, methods=("ARIMA",),
                    fresh=False, command="test")  # fmt: skip
    assert calls == [0]
    lags = results[results.metric == "hp:baselines.arima_lags"]
    assert len(lags) == 2 and lags.value.nunique() == 1
    assert (tmp_path / "tuned" / "full__ARIMA.json").exists()


def test_pairwise_section_compares_stmp_with_every_method_per_group():
    rows = [
        ("full/regular", "STMP", [10.0, 12.0, 11.0]),
        ("full/regular", "LSTM", [20.0, 24.0, 21.0]),  # STMP better in every seed
        ("full/regular", "MAML", [9.0, 13.0, 10.0]),  # STMP better in seed 1 only
        ("one_week/regular", "STMP", [10.0, 12.0, 11.0]),
        ("one_week/regular", "LSTM", [10.0, 12.0, 11.0]),  # no MAML in this setting
    ]
    scores = pd.DataFrame(
        [
            dict(dataset="d", group=g, method=m, seed=s, metric="mse", value=v)
            for g, m, values in rows
            for s, v in enumerate(values)
        ]
    )
    md = report.stmp.pairwise_section(scores)
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("|")}
    assert set(lines) >= {"LSTM", "MAML"} and "STMP" not in lines
    assert "+49.2% (p " in lines["LSTM"] and ", 3/3)" in lines["LSTM"]  # (65 - 33) / 65
    assert "-3.1% (p " in lines["MAML"] and ", 1/3)" in lines["MAML"]  # (32 - 33) / 32
    assert "+0.0% (p 1, 0/3)" in lines["LSTM"] and lines["MAML"].split("|")[3].strip() == ""
    assert report.stmp.pairwise_section(scores[scores.seed == 0]) == ""  # one seed: no test
    assert report.stmp.pairwise_section(scores[scores.method == "STMP"]) == ""  # STMP alone


def test_followup_compares_its_stmp_with_the_reference_methods(tmp_path):
    """A STMP-only follow-up is paired by seed with the reference run's methods (its own
    STMP rows renamed), on the groups and seeds both runs have."""

    def write(run, rows):
        run.mkdir()
        pd.DataFrame(
            [
                dict(
                    experiment="stmp", dataset="d", method=m, group=g, seed=s, metric="mse", value=v
                )  # fmt: skip
                for g, m, values in rows
                for s, v in enumerate(values)
            ]
        ).to_csv(run / "results.csv", index=False)

    write(tmp_path / "ref", [("w/festival", "STMP", [30.0, 90.0, 30.0]),
                             ("w/festival", "XGBoost", [20.0, 22.0, 18.0]),
                             ("full/festival", "XGBoost", [1.0, 1.0, 1.0])])  # fmt: skip
    write(tmp_path / "new", [("w/festival", "STMP", [25.0, 24.0, 26.0])])
    md = stmp_followup.followup_markdown([tmp_path / "ref"], tmp_path / "new", "STMP+x", "cmd")
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("|")}
    assert "-25.0% (p " in lines["XGBoost"] and ", 0/3)" in lines["XGBoost"]  # (20 - 25) / 20
    assert "+50.0% (p " in lines["STMP"] and ", 3/3)" in lines["STMP"]  # (50 - 25) / 50
    assert "full/festival" not in md and "Regenerate: `cmd`" in md
    # a rerun of several methods replaces the reference's rows of those methods
    write(tmp_path / "rerun", [("w/festival", "STMP", [25.0, 24.0, 26.0]),
                               ("w/festival", "XGBoost", [50.0, 48.0, 52.0])])  # fmt: skip
    md = stmp_followup.followup_markdown([tmp_path / "ref"], tmp_path / "rerun", "STMP", "cmd",
                                         replace=True)  # fmt: skip
    pairwise = md.split("## Each rerun")[0]
    lines = {row.split("|")[1].strip(): row for row in pairwise.splitlines() if row.startswith("|")}
    assert "+50.0% (p " in lines["XGBoost"] and ", 3/3)" in lines["XGBoost"]  # (50 - 25) / 50
    # ... and pairs each rerun method with its own reference rows
    changes = md[md.index("## Each rerun method") :]
    assert "| XGBoost | w/festival | 20     | 50    | +150.0% |" in changes, changes
    assert "| STMP    | w/festival | 50     | 25    | -50.0%  |" in changes, changes
    # a run laid over the reference replaces the methods it has, before the follow-up
    write(tmp_path / "over", [("w/festival", "STMP", [40.0, 40.0, 40.0]),
                              ("w/festival", "LSTM", [30.0, 30.0, 30.0])])  # fmt: skip
    md = stmp_followup.followup_markdown([tmp_path / "ref", tmp_path / "over"], tmp_path / "rerun",
                                         "STMP", "cmd", replace=True)  # fmt: skip
    assert "against ref + over" in md
    pairwise = md.split("## Each rerun")[0]
    lines = {row.split("|")[1].strip(): row for row in pairwise.splitlines() if row.startswith("|")}
    assert "+16.7% (p " in lines["LSTM"]  # (30 - 25) / 30: the LSTM comes from "over"
    assert "| STMP    | w/festival | 40     | 25    | -37.5%  |" in md, md  # over's STMP


def test_design_keeps_rows_another_process_wrote_meanwhile(tmp_path, monkeypatch):
    """Two design processes sharing an --out: rows the other one adds while a fit runs
    survive this one's write, and fits already in design.csv are skipped."""
    from experiments import stmp_design

    calls = []

    def fake_score(data, sets, method, seed, folder, out):
        calls.append(folder)
        scores = [dict(group=g, mse=1.0, n=1) for g in ("regular", "festival", "all")]
        other = dict(variant="other", overrides="", method=method, seed=seed)
        rows = stmp_design.read_rows(out / "design.csv")
        rows = pd.concat([rows, pd.DataFrame([dict(other, **r) for r in scores])])
        rows[stmp_design.COLUMNS].to_csv(out / "design.csv", index=False)
        by_region = [dict(region="r1", group="regular", mse=1.0, n=1, mean_y=2.0)]
        return scores, by_region

    monkeypatch.setattr(stmp_design.P, "load_panel", lambda *a: (None, None))
    monkeypatch.setattr(stmp_design, "score_variant", fake_score)
    args = ["--data", "x", "--variant", "mine=", "--out", str(tmp_path)]
    stmp_design.main(args)
    stmp_design.main(args)  # finished: nothing runs again
    stmp_design.main([*args, "--method", "LSTM"])  # a second command into the same --out
    rows = stmp_design.read_rows(tmp_path / "design.csv")
    assert calls == ["mine__STMP__seed0", "mine__LSTM__seed0"]
    commands = (tmp_path / "command.txt").read_text().splitlines()
    assert commands == [f"python -m experiments.stmp_design {' '.join(a)}"
                        for a in (args, [*args, "--method", "LSTM"])]  # fmt: skip
    assert sorted(set(rows.variant)) == ["mine", "other"]
    assert len(rows) == 12
    regions = pd.read_csv(tmp_path / "regions.csv")
    assert regions[["variant", "method", "region"]].values.tolist() == [
        ["mine", "STMP", "r1"],
        ["mine", "LSTM", "r1"],
    ]


def test_design_scores_the_validation_year_and_the_early_stopping_window(tmp_path):
    """A real (tiny) fit: regular, festival and all days of the validation year, plus the
    fit's best early-stopping score read from its curve (``es_window``)."""
    from experiments import stmp_design

    _, data = P.load_panel("synthetic", get_config(smoke=True).data)
    sets = ["train.n_steps=20", "train.eval_every=10", "model.hidden=8", "train.n_tasks=4",
            "train.n_context=8"]  # fmt: skip
    rows, _ = stmp_design.score_variant(data, sets, "STMP", 0, "v__STMP__seed0", tmp_path)
    by_group = {r["group"]: r for r in rows}
    assert list(by_group) == ["regular", "festival", "all", "es_window"]
    curve = pd.read_csv(next((tmp_path / "curves" / "v__STMP__seed0").glob("*.csv")))
    assert by_group["es_window"]["mse"] == curve["val_mse"].min() > 0
    assert by_group["all"]["n"] == by_group["regular"]["n"] + by_group["festival"]["n"]


def test_es_window_reads_single_fit_cells_and_pairs_seeds_with_stmp(tmp_path):
    from experiments import stmp_es_window

    def curve(cell, name, values):
        folder = tmp_path / "curves" / cell
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": range(len(values)), "val_mse": values}).to_csv(
            folder / f"{name}.csv", index=False
        )

    curve("full__STMP__seed0", "000-a", [9.0, 1.0])  # a tuning cell: two fits, left out
    curve("full__STMP__seed0", "001-b", [5.0])
    curve("full__STMP__seed1", "000-a", [12.0, 10.0, 11.0])
    curve("full__STMP__seed2", "000-a", [20.0])
    curve("full__LSTM__seed1", "000-a", [8.0])
    table = stmp_es_window.table(tmp_path).set_index("method")
    assert table.loc["STMP", "seeds"] == "1,2" and table.loc["STMP", "es_mse"] == 15.0
    assert table.loc["LSTM", "ratio_to_stmp"] == 0.8  # paired on seed 1: 8 / 10


def test_design_fit_claims_skip_live_holders_and_take_over_stale_ones(tmp_path):
    import os

    from experiments.stmp_design import claimed

    lock = tmp_path / "running" / "fit"
    with claimed(lock) as mine:
        assert mine and lock.read_text() == str(os.getpid())
        with claimed(lock) as again:  # held by a live process (this one)
            assert not again
    assert not lock.exists()
    lock.write_text(str(_dead_pid()))
    with claimed(lock) as mine:
        assert mine  # a dead holder's lock is taken over
    assert list(lock.parent.iterdir()) == []


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
