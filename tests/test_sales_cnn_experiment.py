"""Sales CNN pipeline pieces, baselines and the experiment's smoke run end to end."""

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest

from dmeta.config import override
from dmeta.report import glance, render
from dmeta.report.sales_cnn import claims_markdown, plots
from dmeta.sales_cnn.baselines import arima_forecast, fe_features, persistence_forecast
from dmeta.sales_cnn.config import get_config
from dmeta.sales_cnn.frames import GroupTotals, build_frames
from dmeta.sales_cnn.model import PAPER_ORDERS
from dmeta.sales_cnn.pipeline import (
    METHODS,
    NETWORKS,
    pooled,
    prepare,
    region_mse,
    step_budgets,
    weighted,
)
from dmeta.sales_cnn.protocol import SalesRun, group_rows, resolve, top_items
from dmeta.sales_cnn.synthetic import synthetic_panel
from dmeta.train import harness
from dmeta.train.harness import Cell, RunError, open_run, run_cells


def test_prepare_split_and_weights():
    panel, _ = synthetic_panel(1, n_regions=2, n_items=5, n_periods=40)
    data = prepare(panel, length=8, horizon=2, n_test=3, train_periods=10)
    n = np.asarray(data.train.n)
    assert data.train.x.shape[2:] == (4, 5, 8)
    assert list(data.test_n) == [15, 15] and list(data.test_ends) == [35, 36, 37]
    for r in range(2):
        ends = data.train_ends[r, : n[r]]
        assert len(np.unique(ends)) == 10
        assert (ends + 2 < data.sp).all()  # no training target reaches the test interval
    assert data.period_days == 7.0  # weekly dates; beta is per day (eq. 18)
    w = np.asarray(weighted(data, 0.1).w)
    np.testing.assert_allclose(
        w[0, : n[0]], np.exp(0.1 * 7 * (data.train_ends[0, : n[0]] + 2 - data.sp)), rtol=1e-6
    )
    daily = prepare(panel, length=8, horizon=2, n_test=3, train_periods=10, period_days=1)
    np.testing.assert_allclose(
        np.asarray(weighted(daily, 0.1).w)[0, : n[0]], w[0, : n[0]] ** (1 / 7), rtol=1e-5
    )
    assert int(pooled(data.train).n) == n.sum()
    # the test targets are the totals of the next k periods of the sales series
    item0_end = data.series[0, 0, data.test_ends[0] + 1 : data.test_ends[0] + 3].sum()
    np.testing.assert_allclose(data.test_y[0, 0], item0_end)
    assert region_mse(data, data.test_y).tolist() == [0.0, 0.0]


def test_prepare_holds_out_the_last_training_ends_for_validation():
    """The last n_val end points validate; the horizon - 1 before them are dropped, so no
    training target (ep + 1 .. ep + k) shares a period with a validation target."""
    panel, _ = synthetic_panel(1, n_regions=2, n_items=5, n_periods=40)
    opts = dict(length=8, horizon=2, n_test=3, train_periods=10)
    full, held = prepare(panel, **opts), prepare(panel, **opts, n_val=2)
    assert full.val is None
    n, n_val = np.asarray(held.train.n), np.asarray(held.val.n)
    ends = np.unique(full.train_ends[0, : int(full.train.n[0])])
    per_end = np.asarray(full.train.n) // len(ends)  # items per region
    np.testing.assert_array_equal(n + n_val + per_end, np.asarray(full.train.n))
    for r in range(2):
        assert set(held.train_ends[r, : n[r]]) == set(ends[:-3])  # not trained on
        assert set(held.val_ends[r, : n_val[r]]) == set(ends[-2:])
        assert held.train_ends[r, : n[r]].max() + 2 <= held.val_ends[r, : n_val[r]].min()
        # the validation rows are the held-out rows: same items, ends and targets
        rows = np.isin(full.train_ends[r, : int(full.train.n[r])], ends[-2:])
        np.testing.assert_allclose(held.scaler.inverse_y(held.val.y[r, : n_val[r]]),
                                   full.train_y[r, : int(full.train.n[r])][rows], rtol=1e-5)  # fmt: skip
    w = np.asarray(weighted(held, 0.1, val=True).w)
    np.testing.assert_allclose(
        w[0, : n_val[0]], np.exp(0.7 * (held.val_ends[0, : n_val[0]] + 2 - held.sp)), rtol=1e-6
    )
    np.testing.assert_array_equal(held.test_y, full.test_y)
    with pytest.raises(ValueError, match="n_val=10"):
        prepare(panel, **opts, n_val=10)


def test_matched_schedule_gives_every_network_the_transfer_budget():
    n = np.array([300, 500, 400])  # samples per region; pooled 1200
    opts = dict(epochs=2.0, finetune_epochs=1.0, batch_size=100, eval_every=5)
    paper = {m: step_budgets(m, n, schedule="paper", **opts) for m in NETWORKS}
    # pooled: 2 * 1200 / 100 = 24 -> 25; per region: 2 * 500 / 100 = 10; fine-tune 5
    assert paper == {"DNN": (10,), "CNN": (10,), "CNN+WD": (10,), "CNN+WD+TL": (25, 5),
                     "Single-CNN": (25,)}  # fmt: skip
    matched = {m: step_budgets(m, n, schedule="matched", **opts) for m in NETWORKS}
    assert {sum(b) for b in matched.values()} == {30}
    assert matched["CNN+WD+TL"] == paper["CNN+WD+TL"]
    with pytest.raises(ValueError, match="schedule"):
        step_budgets("CNN", n, schedule="equal", **opts)


def test_weekly_panels_run_week_scale_sizes_and_orders_daily_ones_the_papers():
    cfg = get_config(size="paper")
    assert (cfg.model.maps, cfg.model.hidden, cfg.dnn.hidden) == (128, 1024, 1024)
    assert (cfg.train.epochs, cfg.train.finetune_epochs) == (10.0, 10.0)
    weekly, _ = synthetic_panel(0, n_regions=2, n_items=4, n_periods=30)
    days = np.datetime64("2017-01-01") + np.arange(30).astype("timedelta64[D]")
    daily = dataclasses.replace(weekly, dates=days)
    d, w = resolve(cfg, daily), resolve(cfg, weekly)
    assert (d.data.length, d.data.horizon, d.model.kwargs()["orders"]) == (84, 7, PAPER_ORDERS)
    assert (w.data.length, w.data.horizon, w.model.kwargs()["orders"]) == (26, 1, ((4, 4), (3, 3)))
    assert w.protocol.sweep_lengths == (13, 26, 52) and w.train.beta == d.train.beta == 0.02
    assert resolve(override(cfg, ["data.period_days=1"]), weekly).data.length == 84


def test_a_daily_field_set_on_a_weekly_panel_is_named_in_the_log(caplog):
    weekly, _ = synthetic_panel(0, n_regions=2, n_items=4, n_periods=30)
    with caplog.at_level(logging.WARNING, logger="dmeta.sales_cnn.config"):
        cfg = resolve(override(get_config(), ["data.n_val=4"]), weekly)
    assert cfg.data.n_val == cfg.weekly.n_val == 1
    assert caplog.messages == [
        "weekly panel: data.n_val=4 is replaced by weekly.n_val=1 (set that instead)"
    ]


def test_top_items_keeps_the_best_sellers_and_renumbers_their_groups():
    panel, _ = synthetic_panel(0, n_regions=2, n_items=12, n_periods=20)
    kept = top_items(panel, 4)
    best = np.argsort(-panel.sales.sum((0, 2)))[:4]
    assert kept.items == tuple(panel.items[i] for i in np.sort(best))
    np.testing.assert_array_equal(kept.x, panel.x[:, np.sort(best)])
    assert sorted(set(kept.brand)) == list(range(len(set(panel.brand[best]))))
    frames, _ = build_frames(kept.x, kept.brand, kept.category, np.array([9]), length=4,
                             horizon=1, target=0)  # fmt: skip
    same_brand = kept.brand == kept.brand[0]
    np.testing.assert_allclose(frames[0, 0, 0, 1], frames[0, same_brand, 0, 0].sum(0), rtol=1e-6)
    assert top_items(panel, None) is panel


def test_group_rows_choose_totals_and_old_folders_resume_with_item_sums(tmp_path):
    panel, _ = synthetic_panel(0, n_regions=2, n_items=6, n_periods=40)
    r, _, n_periods, d = panel.x.shape
    totals = GroupTotals(
        brand=np.ones((r, panel.brand.max() + 1, n_periods, d), np.float32),
        category=np.ones((r, panel.category.max() + 1, n_periods, d), np.float32),
        region=np.ones((r, n_periods, d), np.float32),
    )
    panel = dataclasses.replace(panel, totals=totals)
    cfg = get_config(smoke=True)
    selected = override(cfg, ["data.group_rows=selected"])
    assert SalesRun("synthetic", panel, cfg).panel.totals is totals
    assert SalesRun("synthetic", panel, selected).panel.totals is None
    with pytest.raises(ValueError, match="group_rows='all'"):
        group_rows(panel, "all")
    # a folder saved before data.group_rows (its config.json lacks the key) used item sums
    opts = dict(data="synthetic", seeds=1, methods=("Naive",), command="x", fresh=False)
    open_run(tmp_path, cfg, **opts)
    run_cells(tmp_path, [Cell("Naive", 0)], lambda c: [])
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["data.group_rows"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match="data.group_rows differ"):
        open_run(tmp_path, cfg, **opts)
    open_run(tmp_path, selected, **opts)


def test_run_keeps_two_prepared_sets_and_recomputes_evicted_ones_alike():
    panel, _ = synthetic_panel(0, n_regions=2, n_items=5, n_periods=40)
    run = SalesRun("synthetic", panel, resolve(get_config(smoke=True), panel))
    first = run.prepared(8, 1)
    naive = run.forecast(first, "Naive", 0, {})
    run.prepared(8, 2), run.prepared(13, 1)
    assert list(run._prepared) == [(8, 2, False), (13, 1, False)]
    again = run.prepared(8, 1)
    assert again is not first
    np.testing.assert_array_equal(np.asarray(again.train.x), np.asarray(first.train.x))
    np.testing.assert_array_equal(run.forecast(again, "Naive", 0, {}), naive)
    # keyed by the set, not the object: another size never gets this one's forecasts
    assert not np.array_equal(run.forecast(run.prepared(8, 2), "Naive", 0, {}), naive)


def test_every_method_forecasts_no_negative_sales(monkeypatch):
    panel, _ = synthetic_panel(0, n_regions=2, n_items=5, n_periods=40)
    run = SalesRun("synthetic", panel, resolve(get_config(smoke=True), panel))
    raw = np.array([[-1.0, 2.0], [0.5, -0.1]])
    monkeypatch.setattr(run, "_unclipped", lambda *a, **k: raw)
    np.testing.assert_array_equal(run.forecast(None, "CNN", 0, {}), [[0.0, 2.0], [0.5, 0.0]])


def test_baseline_features_and_forecasts():
    frames = np.arange(2 * 1 * 1 * 10, dtype=np.float32).reshape(2, 1, 1, 10)
    feats = fe_features(frames)
    assert feats.shape == (2, 7)
    np.testing.assert_allclose(feats[0], [9, 8, 6, 4.5, 4.5, np.std(np.arange(10)), 0.0], rtol=1e-6)
    series = np.stack([np.full(30, 3.0), np.sin(np.arange(30.0)) + 5.0])
    ends = np.array([20, 24])
    arima = arima_forecast(series, ends, horizon=2)
    assert arima.shape == (2, 2)
    np.testing.assert_allclose(arima[0], [6.0, 6.0])  # constant series: mean fallback
    assert np.all(np.abs(arima[1] - 10.0) < 3.0)
    np.testing.assert_allclose(persistence_forecast(series, ends, horizon=2)[0], [6.0, 6.0])


def test_arima_is_statsmodels_autoreg():
    from statsmodels.tsa.ar_model import AutoReg

    series = np.random.default_rng(0).gamma(2.0, 3.0, size=(3, 40))
    got = arima_forecast(series, np.array([30, 39]), horizon=3, lags=2)
    want = [
        [AutoReg(s[: e + 1], lags=2, trend="c").fit().forecast(3).sum() for e in (30, 39)]
        for s in series
    ]
    np.testing.assert_allclose(got, np.clip(want, 0, None), rtol=1e-9)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from experiments import sales_cnn

    cfg = override(sales_cnn.get_config(smoke=True), ["weekly.sweep_lengths=13"])
    out = tmp_path_factory.mktemp("sales_cnn")
    kw = dict(data="synthetic", seeds=1, methods=sales_cnn.METHODS, command="test")
    return sales_cnn, cfg, out, kw, sales_cnn.run(cfg, out=out, fresh=True, **kw)


def test_smoke_run_end_to_end(smoke_run):
    _, _, out, _, df = smoke_run
    table = df[(df["experiment"] == "sales_cnn") & (df["metric"] == "mse")]
    assert set(table["method"]) == set(METHODS)
    groups = set(table["group"])
    assert "average" in groups and len(groups) == 3  # smoke keeps the 2 largest regions
    assert np.isfinite(df["value"]).all() and (df["value"] >= 0).all()
    assert {"hp:arima_lags", "hp:max_depth", "hp:learning_rate", "hp:rate"} <= set(df["metric"])
    assert (out / "command.txt").exists()
    assert "Table 1 analog" in render(out) == (out / "results.md").read_text()


def test_resume_after_losing_a_cell_is_identical(smoke_run):
    sales_cnn, cfg, out, kw, full = smoke_run
    (out / "cells" / "table1__CNN_WD_TL__seed0.csv").unlink()
    (out / "cells" / "length_13__CNN_WD_TL__seed0.csv").unlink()
    resumed = sales_cnn.run(cfg, out=out, fresh=False, **kw)
    pd.testing.assert_frame_equal(resumed, full)


def test_sweep_plots(tmp_path):
    rows = [
        (f"sales_cnn_sweep_{name}", "synthetic", "CNN+WD+TL", f"{name}={v}", s, "mse", v + s)
        for name in ("horizon", "length", "beta")
        for v in (1, 2)
        for s in (0, 1)
    ]
    df = pd.DataFrame(
        rows, columns=["experiment", "dataset", "method", "group", "seed", "metric", "value"]
    )
    plots(tmp_path, df)
    assert all(
        (tmp_path / f"sweep_{n}.png").stat().st_size > 1000 for n in ("horizon", "length", "beta")
    )


def test_claims_average_the_seeds_and_pair_the_regions():
    """Seeds vary only training: each region's MSE is averaged over seeds and the regions
    are the paired units (6 here, not 18 (region, seed) pairs)."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        for region in range(6):
            base = (1.0 + 0.1 * region) * (1 + 0.05 * rng.random())
            for method, factor in (("CNN", 1.0), ("DNN", 1.2), ("CNN+WD", 1.3)):
                rows.append(("sales_cnn", "x", method, f"r{region}", seed, "mse", base * factor))
            rows.append(("sales_cnn", "x", "CNN", "average", seed, "mse", 0.0))  # not a unit
    df = pd.DataFrame(
        rows, columns=["experiment", "dataset", "method", "group", "seed", "metric", "value"]
    )
    text = claims_markdown(df)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()[4:]}
    assert set(lines) == {"CNN < DNN", "CNN+WD < CNN"}  # the claims with both methods
    assert "| 6/6 " in lines["CNN < DNN"] and "holds" in lines["CNN < DNN"]
    assert "| 0/6 " in lines["CNN+WD < CNN"] and "reversed" in lines["CNN+WD < CNN"]
    cnn = df[(df.method == "CNN") & (df.group != "average")].groupby("group")["value"].mean()
    assert f"| {cnn.mean():.4g} " in lines["CNN < DNN"]  # the mean of the seed-averaged MSEs


def test_glance_cells_from_the_claims_and_the_sweeps(tmp_path):
    """The At-a-glance table as a generic claims table: the orderings paired over the
    stores (seed means; the "average" row is no unit) and the sweep claims (the paper's
    point best or not; a falling MSE along k)."""
    rows = []
    for seed in range(2):
        for region in range(5):
            for method, value in (("CNN", 1.0 + region), ("DNN", 1.5 + 1.1 * region)):
                rows.append(("sales_cnn", "x", method, f"r{region}", seed, "mse", value))
        rows.append(("sales_cnn", "x", "CNN", "average", seed, "mse", 100.0))
        for beta, value in (("beta=0.0", 3.0), ("beta=0.02", 2.0), ("beta=0.05", 2.5)):
            rows.append(("sales_cnn_sweep_beta", "x", "CNN+WD+TL", beta, seed, "mse", value))
        for k, value in (("horizon=1", 4.0), ("horizon=2", 5.0), ("horizon=4", 1.0)):
            rows.append(("sales_cnn_sweep_horizon", "x", "CNN+WD+TL", k, seed, "mse", value))
    (tmp_path / "run").mkdir()
    frame = pd.DataFrame(rows, columns=list(harness.COLUMNS))
    frame.to_csv(tmp_path / "run" / "results.csv", index=False)
    sweep = dict(kind="sweep", metric="mse")
    spec = {
        "table": "claims",
        "columns": [{"label": "run", "runs": ["run"], "segments": "", "skip": ["average"]}],
        "claims": [
            dict(label="CNN < DNN", kind="beats", a="CNN", b="DNN", higher=False, metric="mse",
                 experiment="sales_cnn"),
            dict(sweep, label="beta", experiment="sales_cnn_sweep_beta", paper="beta=0.05"),
            dict(sweep, label="k", experiment="sales_cnn_sweep_horizon"),
            dict(sweep, label="T", experiment="sales_cnn_sweep_length", paper="length=26"),
        ],
    }  # fmt: skip
    (tmp_path / "glance.json").write_text(json.dumps(spec))
    text = glance.render(tmp_path / "glance.json")
    cells = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()}
    assert cells["CNN < DNN"].startswith("holds: 3 vs 3.7 (p ")
    assert cells["CNN < DNN"].endswith(", 5/5)")
    assert cells["beta"] == "no: 0.02 best, 2 vs 2.5"
    assert cells["k"] == "partly: 4, 5, 1"
    assert cells["T"] == "no sweeps"


def test_equal_tuning_picks_on_validation(tmp_path):
    from experiments import sales_cnn

    cfg = override(sales_cnn.get_config(smoke=True), ["tuning.trials=3"])
    df = sales_cnn.run(
        cfg, data="synthetic", out=tmp_path, seeds=1, methods=("ARIMA",), fresh=True, command=""
    )
    assert df.loc[df["metric"] == "hp:arima_lags", "value"].item() in (1.0, 2.0, 3.0)
    assert set(df["experiment"]) == {"sales_cnn"}  # the sweeps need CNN+WD+TL


def test_shared_tuning_reuses_the_first_seeds_choice(tmp_path):
    panel, _ = synthetic_panel(0, n_regions=2, n_items=5, n_periods=40)
    cfg = override(
        resolve(get_config(smoke=True), panel), ["tuning.trials=3", "tuning.per_seed=false"]
    )
    run = SalesRun("synthetic", panel, cfg, tmp_path)
    first = run.tuned("ARIMA", 0)
    assert run.tuned("ARIMA", 1) == first and isinstance(first["arima_lags"], int)
    assert list(run._tuned) == [("ARIMA", 0)]  # seed 1 did not tune
    assert (tmp_path / "tuned" / "table1__ARIMA.json").exists()
