"""Data core: long-frame validation and repairs, Definition 2 windows, tasks, synthetic data."""

import dataclasses
import logging

import jax
import numpy as np
import pandas as pd
import pytest

from dmeta.data.frames import DataError, validate_long
from dmeta.data.synthetic import CARRYOVER_LAGS, _lagged_sum, make_demand
from dmeta.data.tasks import build_task_pool, eval_tasks, sample_tasks, split_segments, unscale
from dmeta.data.windows import make_windows, n_records, season_length, to_panel
from dmeta.datasets import table


def read_table(path, *, id_col="unique_id", ds_col="ds", y_col="y", **options):
    loaded = table.load(path, id_col=id_col, ds_col=ds_col, y_col=y_col)
    return table.long_frame(loaded, **options)


def long_frame(n_ids=2, n_steps=10, freq="D"):
    dates = pd.date_range("2024-01-01", periods=n_steps, freq=freq)
    rows = [
        (f"s{i}", d, float(i * 100 + t), float(t))
        for i in range(n_ids)
        for t, d in enumerate(dates)
    ]
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y", "price"])


def write_csv(tmp_path, df, name="sales.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# --- bad input: each case errors naming file, column and line, or is a logged repair ---


def test_nan_and_inf_name_file_column_and_line(tmp_path):
    df = long_frame()
    df.loc[3, "y"] = np.nan
    path = write_csv(tmp_path, df)
    with pytest.raises(DataError, match=r"sales\.csv: column 'y', line 5: is empty"):
        read_table(path)
    df = long_frame()
    df.loc[12, "price"] = np.inf
    with pytest.raises(DataError, match=r"column 'price', line 14: is NaN or infinite"):
        read_table(write_csv(tmp_path, df))


def test_in_memory_frame_outside_float32_names_the_column_and_line():
    df = long_frame()
    df.loc[7, "price"] = 1e39
    with pytest.raises(DataError, match=r"<DataFrame>: column 'price' is outside the float32 .*9"):
        validate_long(df)


def test_non_numeric_and_bad_dates(tmp_path):
    df = long_frame().astype({"y": object})
    df.loc[2, "y"] = "ten"
    with pytest.raises(DataError, match=r"column 'y', line 4: is not a number \(values 'ten'\)"):
        read_table(write_csv(tmp_path, df))
    df = long_frame().astype({"ds": object})
    df.loc[6, "ds"] = "not a date"
    with pytest.raises(DataError, match=r"column 'ds', line 8: is not a date"):
        read_table(write_csv(tmp_path, df))


def test_negative_demand_error_or_logged_clip(tmp_path, caplog):
    df = long_frame()
    df.loc[4, "y"] = -3.0
    path = write_csv(tmp_path, df)
    with pytest.raises(DataError, match=r"column 'y' has negative demand at line 6"):
        read_table(path, negative="error")
    with caplog.at_level(logging.WARNING):
        lf = read_table(path)
    assert lf.frame["y"].min() == 0.0
    assert "clipped 1 negative" in lf.repairs[0] and "line 6" in caplog.text


def test_duplicates_error_or_sum(tmp_path):
    df = long_frame()
    df = pd.concat([df, df.iloc[[2]]], ignore_index=True)
    path = write_csv(tmp_path, df)
    with pytest.raises(
        DataError, match=r"duplicate \(unique_id, ds\) rows: \(s0, 2024-01-03\) at lines 4, 22"
    ):
        read_table(path)
    lf = read_table(path, duplicates="sum")
    assert len(lf.frame) == 20
    assert lf.frame.loc[2, "y"] == 2 * df.loc[2, "y"]


def test_unsorted_and_gapped_dates_are_logged_repairs(tmp_path):
    df = long_frame().sample(frac=1.0, random_state=0)
    df = df.drop(index=[3, 4])  # a two-day gap in s0
    lf = read_table(write_csv(tmp_path, df))
    frame = lf.frame
    assert len(frame) == 20 and frame["ds"].is_monotonic_increasing is False  # sorted per id
    s0 = frame[frame.unique_id == "s0"]
    assert s0["ds"].is_monotonic_increasing and list(s0["y"].iloc[3:5]) == [0.0, 0.0]
    assert list(s0["price"].iloc[2:6]) == [2.0, 2.0, 2.0, 5.0]  # forward-filled features
    assert any("sorted" in r for r in lf.repairs) and any(
        "filled 2 missing" in r for r in lf.repairs
    )


def test_missing_unknown_columns_and_renames(tmp_path):
    df = long_frame().rename(columns={"y": "sales"})
    path = write_csv(tmp_path, df)
    with pytest.raises(DataError, match=r"missing column\(s\) \['y'\]"):
        read_table(path)
    assert read_table(path, y_col="sales").frame["y"].sum() == df["sales"].sum()
    with pytest.raises(DataError, match=r"unknown column\(s\) \['price'\]"):
        read_table(path, y_col="sales", feature_cols=[])


def test_off_calendar_dates_name_lines(tmp_path):
    df = long_frame(freq="W-SUN")
    df.loc[5, "ds"] = df.loc[5, "ds"] + pd.Timedelta(days=2)
    with pytest.raises(DataError, match=r"off the regular 'W-SUN' calendar .* line 7"):
        read_table(write_csv(tmp_path, df))


def test_parquet_round_trip(tmp_path):
    df = long_frame()
    path = tmp_path / "sales.parquet"
    df.to_parquet(path)
    lf = read_table(path)
    assert lf.freq == "D" and lf.feature_cols == ("price",)
    np.testing.assert_array_equal(lf.frame["y"], df["y"])


def test_series_shorter_than_a_window_is_logged(caplog):
    df = pd.concat([long_frame(1, 40), long_frame(2, 5).query("unique_id == 's1'")])
    panel = to_panel(validate_long(df))
    with caplog.at_level(logging.WARNING):
        w = make_windows(panel, seq_len=10, horizon_gap=1, horizon_len=7, season=7, min_history=10)
    assert "1 segments yield no sample" in caplog.text and set(w.segment) == {0}


# --- Definition 2 windows ---


@pytest.mark.parametrize("freq", ["D", "W-SUN"])
def test_windows_follow_definition_2(freq):
    season = season_length(freq)
    n_steps = season + 40
    df = long_frame(2, n_steps, freq)
    df["y"] = np.random.default_rng(0).poisson(5.0, len(df)).astype(float)
    panel = to_panel(validate_long(df))
    s, t_g, t_f = 6, 2, 3
    w = make_windows(
        panel, seq_len=s, horizon_gap=t_g, horizon_len=t_f, season=season, min_history=s
    )
    vals = panel.values
    for m in [0, 7, len(w.segment) - 1]:
        i, t = w.segment[m], w.t_c[m]
        assert w.y[m] == pytest.approx(vals[i, t + t_g : t + t_g + t_f, 0].sum())
        np.testing.assert_array_equal(w.x_local[m], vals[i, t - s + 1 : t + 1])
        t_l = t + t_g - season
        expected = np.zeros((s, vals.shape[2]), np.float32)
        lo = max(t_l - s + 1, 0)
        if t_l >= 0:
            expected[s - (t_l + 1 - lo) :] = vals[i, lo : t_l + 1]
        np.testing.assert_array_equal(w.x_season[m], expected)
    # every sample whose full local window and target are observed, and no other
    per_segment = n_steps - (s - 1) - (t_g + t_f - 1)
    assert len(w.segment) == 2 * per_segment


def test_left_padding_with_min_history():
    panel = to_panel(validate_long(long_frame(1, 20)))
    w = make_windows(panel, seq_len=8, horizon_gap=1, horizon_len=2, season=7, min_history=3)
    assert w.t_c[0] == 2 and w.local_obs[0] == 3
    np.testing.assert_array_equal(w.x_local[0][:5], 0.0)


# --- tasks ---


@pytest.fixture(scope="module")
def pool_and_split():
    data = make_demand(n_segments=16, n_clusters=4, n_steps=400, seed=1)
    panel = to_panel(validate_long(data.frame))
    w = make_windows(panel, seq_len=10, horizon_gap=2, horizon_len=5, season=365)
    return w, build_task_pool(w), split_segments(n_records(panel))


def test_split_segments_by_records():
    split = split_segments(np.array([5, 50, 10, 40, 30, 20, 1, 2, 3, 4]))
    np.testing.assert_array_equal(split.train, [0, 1, 2, 3, 4, 5, 9])
    np.testing.assert_array_equal(split.val, [6, 8])
    np.testing.assert_array_equal(split.test, [7])


def test_eval_tasks_have_no_leakage_and_support_only_scaling(pool_and_split):
    w, pool, split = pool_and_split
    batch = eval_tasks(pool, split.test)
    gap = pool.horizon_gap + pool.horizon_len - 1
    for row, seg in enumerate(np.asarray(batch.segment)):
        t_c = np.asarray(pool.t_c[seg])
        cut, q0, n = int(pool.cut[seg]), int(pool.query_start[seg]), int(pool.n[seg])
        assert (
            cut >= 1 and q0 < n and t_c[q0] >= t_c[cut - 1] + gap
        )  # last support target <= first query time
        assert t_c[q0 - 1] < t_c[cut - 1] + gap  # the query starts as early as allowed
        assert batch.support.mask[row].sum() == cut and batch.query.mask[row].sum() == n - q0
        # the scale uses only demand up to the end of the last support target
        obs = w.panel.observed[seg]
        fit = obs & (np.arange(obs.size) <= t_c[cut - 1] + gap)
        assert float(pool.scale[seg]) == pytest.approx(w.panel.values[seg, fit, 0].mean(), rel=1e-5)
    raw = unscale(pool, batch.segment, batch.query.y)
    seg0 = int(batch.segment[0])
    q0 = int(pool.query_start[seg0])
    assert float(raw[0, 0]) == pytest.approx(w.y[w.segment == seg0][q0], rel=1e-5)


def test_sampler_is_seeded_jittable_and_time_ordered(pool_and_split):
    _, pool, split = pool_and_split
    sample = jax.jit(sample_tasks, static_argnames=("n_tasks", "n_support", "n_query", "scaling"))
    kwargs = dict(n_tasks=6, n_support=8, n_query=4)
    a = sample(jax.random.key(3), pool, split.train, **kwargs)
    b = sample(jax.random.key(3), pool, split.train, **kwargs)
    c = sample(jax.random.key(4), pool, split.train, **kwargs)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.support.y, c.support.y)
    assert set(np.asarray(a.segment)) <= set(split.train)
    assert a.support.x_local.shape == (6, 8, 10, 4) and a.query.y.shape == (6, 4)
    assert float(a.query.mask.sum()) > 0 and float(a.support.mask.sum()) > 0
    # no leakage: every support target ends before the first query time (a pool whose
    # targets are the sample times shows which samples were drawn)
    timed = dataclasses.replace(pool, y=pool.t_c.astype(np.float32))
    t = sample(jax.random.key(5), timed, split.train, **kwargs, scaling="segment")
    for row in range(6):
        t_sup = np.asarray(t.support.y[row])[np.asarray(t.support.mask[row]) > 0]
        t_qry = np.asarray(t.query.y[row])[np.asarray(t.query.mask[row]) > 0]
        assert len(t_sup) and len(t_qry)
        assert t_sup.max() + pool.gap <= t_qry.min()
        assert len(np.unique(t_sup)) == len(t_sup)  # drawn without replacement


# --- synthetic generator ---


def test_synthetic_structure():
    data = make_demand(n_segments=40, n_clusters=4, n_steps=500, seed=0)
    seg = data.segments
    assert seg["n_records"].max() == 500 and (seg["n_records"] < 250).mean() > 0.4  # long tail
    counts = data.frame.groupby("unique_id").size()
    np.testing.assert_array_equal(counts.loc[seg.unique_id].to_numpy(), seg["n_records"].to_numpy())
    # basket co-occurrence follows the clusters
    cluster = dict(zip(seg.unique_id, seg.cluster))
    b = data.baskets.assign(c=data.baskets.unique_id.map(cluster))
    pairs = b.merge(b, on="basket_id").query("unique_id_x < unique_id_y")
    assert (pairs.c_x == pairs.c_y).mean() > 0.6
    # segments of a cluster share seasonality: correlation of monthly means within > across
    full = data.frame.pivot(index="ds", columns="unique_id", values="y").dropna(axis=1)
    corr = np.log1p(full.resample("MS").mean()).corr().to_numpy()
    same = np.equal.outer(full.columns.map(cluster), full.columns.map(cluster))
    off = ~np.eye(len(corr), dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.2
    weekly = make_demand(n_segments=8, n_clusters=2, n_steps=120, freq="W", seed=0)
    assert validate_long(weekly.frame).freq == "W-SUN"


def test_lagged_sum_matches_a_loop():
    x = (np.random.default_rng(0).random((3, 80)) < 0.2).astype(float)
    lo, hi = CARRYOVER_LAGS
    ref = [[sum(x[i, t - k] for k in range(lo, hi) if t >= k) for t in range(80)] for i in range(3)]
    np.testing.assert_array_equal(_lagged_sum(x, lo, hi), np.array(ref))


def test_carryover_is_a_cluster_specific_delayed_promotion_response():
    data = make_demand(n_segments=24, n_clusters=4, n_steps=900, carryover=0.6, seed=2)
    gamma, cluster = data.truth["carryover"], data.truth["cluster"]
    for c in range(4):  # one level per cluster, segments spread around it
        assert np.ptp(gamma[cluster == c]) < 0.6
    full = data.frame.groupby("unique_id").filter(lambda g: len(g) == 900)
    promo = full.pivot(index="unique_id", columns="ds", values="promo")
    log_y = np.log1p(full.pivot(index="unique_id", columns="ds", values="y").to_numpy())
    lagged = _lagged_sum(promo.to_numpy(), *CARRYOVER_LAGS)
    slope = [np.polyfit(lagged[i], log_y[i], 1)[0] for i in range(len(promo))]
    g = gamma[data.segments.set_index("unique_id").index.get_indexer(promo.index)]
    strong = np.abs(g) > 0.3
    assert strong.sum() >= 2 and (np.sign(slope)[strong] == np.sign(g)[strong]).all()
    assert not make_demand(n_segments=8, n_steps=200, seed=2).truth["carryover"].any()


def test_carryover_levels_set_each_clusters_delayed_response():
    kw = dict(n_segments=40, n_clusters=4, n_steps=200, carryover=0.5, seed=3)
    truth = make_demand(carryover_levels=(-1, 1, -1, 1), **kw).truth
    for c in range(4):
        assert abs(abs(np.median(truth["carryover"][truth["cluster"] == c])) - 0.5) < 0.05
    default = make_demand(**kw).truth["carryover"]
    spread = make_demand(carryover_levels=np.linspace(-1, 1, 4), **kw).truth["carryover"]
    np.testing.assert_allclose(default, spread, atol=1e-12)  # None: levels over -1..1
    with pytest.raises(ValueError, match="3 values for 4 clusters"):
        make_demand(carryover_levels=(-1, 0, 1), **kw)
