"""RMLDP data loaders: Walmart and Groceries on the shared files, tables, bad input."""

import numpy as np
import pandas as pd
import pytest

from dmeta.data.frames import DataError
from dmeta.data.spec import data_root
from dmeta.data.windows import to_panel
from dmeta.datasets import groceries, table, walmart
from dmeta.graph.cooccurrence import cooccurrence_graph
from dmeta.rmldp.protocol import (
    calendar_columns,
    from_groceries,
    from_table,
    from_walmart,
    load_synthetic,
    with_calendar,
)

WALMART = data_root() / "walmart_recruiting"
GROCERIES = data_root() / "groceries_kaggle"


@pytest.mark.realdata
@pytest.mark.skipif(not WALMART.exists(), reason=f"shared Walmart data not found at {WALMART}")
def test_walmart_store_department_weekly_with_features():
    data = from_walmart(walmart.load(WALMART))
    frame = data.frame.frame
    assert data.frame.freq == "W-FRI"
    assert frame["unique_id"].nunique() == 3331
    assert {"holiday", "temperature", "cpi", "markdown1"} <= set(data.frame.feature_cols)
    assert frame["y"].min() >= 0 and np.isfinite(frame[list(data.frame.feature_cols)]).all().all()
    assert set(data.groups) == {"typeA", "typeB", "typeC"}
    assert data.baskets is None and data.edges is None
    row = frame[(frame["unique_id"] == "1_1") & (frame["ds"] == "2010-02-12")].iloc[0]
    assert row["y"] == pytest.approx(46039.49) and row["holiday"] == 1.0


@pytest.mark.realdata
@pytest.mark.skipif(
    not GROCERIES.exists(), reason=f"shared Groceries data not found at {GROCERIES}"
)
def test_groceries_daily_categories_and_baskets():
    data = from_groceries(groceries.load(GROCERIES))
    frame = data.frame.frame
    assert data.frame.freq == "D" and frame["unique_id"].nunique() == 167
    assert frame["y"].sum() == 38765  # every row is one item bought
    panel = to_panel(data.frame)
    assert panel.values.shape[1] == 729  # 2014-01-01 .. 2015-12-30
    milk = frame[frame["unique_id"] == "whole milk"]
    assert milk["y"].sum() == 2502
    assert (frame["baskets"] > 0).any() and frame["baskets"].max() < 200
    w = cooccurrence_graph(data.baskets, panel.ids, threshold=1)
    assert w.shape == (167, 167) and w.sum() > 0 and np.allclose(w, w.T)


def test_table_with_category_column_and_bad_rows(tmp_path):
    path = tmp_path / "t.csv"
    dates = pd.date_range("2021-01-01", periods=4, freq="D")
    df = pd.DataFrame(
        {
            "unique_id": ["a"] * 4 + ["b"] * 4,
            "ds": list(dates) * 2,
            "y": [1.0, 2, 3, 4, 5, 6, 7, 8],
            "category": ["x"] * 4 + ["z"] * 4,
            "price": 1.0,
        }
    )
    df.to_csv(path, index=False)
    data = from_table(table.load(path))
    assert data.groups.to_dict() == {"a": "x", "b": "z"}
    assert data.frame.feature_cols == ("price",)
    df.loc[5, "category"] = "x"
    df.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"t.csv: column 'category', line 7: changes within its series"
    ):
        from_table(table.load(path))
    df.loc[5, "category"] = "z"
    df = df.astype({"y": object})
    df.loc[2, "y"] = "oops"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"t.csv.*'y'.*line 4"):
        from_table(table.load(path))


def test_walmart_bad_inputs_name_file_column_line(tmp_path):
    train = pd.DataFrame(
        {
            "Store": [1, 1],
            "Dept": [1, 1],
            "Date": ["2010-02-05", "2010-02-12"],
            "Weekly_Sales": [10.0, 12.0],
            "IsHoliday": ["FALSE", "TRUE"],
        }
    )
    feats = pd.DataFrame(
        {"Store": [1, 1], "Date": ["2010-02-05", "2010-02-12"], "IsHoliday": ["FALSE", "TRUE"]}
        | {c: [1.0, 2.0] for c in ("Temperature", "Fuel_Price", "CPI", "Unemployment")}
        | {f"MarkDown{i}": [None, 3.0] for i in range(1, 6)}
    )
    pd.DataFrame({"Store": [1], "Type": ["A"], "Size": [10]}).to_csv(
        tmp_path / "stores.csv", index=False
    )
    train.to_csv(tmp_path / "train.csv", index=False)
    feats.to_csv(tmp_path / "features.csv", index=False)
    data = from_walmart(walmart.load(tmp_path))
    assert data.frame.frame["markdown1"].tolist() == [0.0, 3.0]  # logged repair
    bad = train.copy()
    bad.loc[1, "Date"] = "12/31/xx"
    bad.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv.*'Date'.*line 3"):
        from_walmart(walmart.load(tmp_path))
    feats = feats.astype({"CPI": object})
    feats.loc[1, "CPI"] = "n/a?"
    train.to_csv(tmp_path / "train.csv", index=False)
    feats.to_csv(tmp_path / "features.csv", index=False)
    with pytest.raises(DataError, match=r"features.csv.*'CPI'.*line 3"):
        from_walmart(walmart.load(tmp_path))
    feats.loc[1, "CPI"] = 2.0
    feats.iloc[:1].to_csv(tmp_path / "features.csv", index=False)
    with pytest.raises(DataError, match=r"features.csv.*no value.*train.csv line 3"):
        from_walmart(walmart.load(tmp_path))


def test_groceries_bad_date_names_line(tmp_path):
    path = tmp_path / "Groceries_dataset.csv"
    pd.DataFrame(
        {
            "Member_number": [1, 2],
            "Date": ["01-01-2014", "2014/31/31"],
            "itemDescription": ["a", "b"],
        }
    ).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"Groceries_dataset.csv.*'Date'.*line 3"):
        from_groceries(groceries.load(tmp_path))


def test_synthetic_groups_are_categories():
    data = load_synthetic(n_segments=8, n_clusters=2, n_steps=120, freq="W")
    assert set(data.groups) == {"cat0", "cat1"} and len(data.baskets) > 0


def test_calendar_feature_group():
    """``data.calendar``: month one-hot, year phase and (daily) weekday one-hot, appended to
    each series' features, which reach the panel the models read."""
    ds = pd.Series(pd.to_datetime(["2024-01-01", "2024-07-02", "2024-12-31"]))
    daily = calendar_columns(ds, "D")
    assert daily.shape == (3, 2 + 12 + 7)
    assert daily.loc[0, "cal_month1"] == 1 and daily.loc[1, "cal_month7"] == 1
    assert daily.loc[0, "cal_dow0"] == 1  # 2024-01-01 was a Monday
    assert daily.loc[2, "cal_dow1"] == 1 and daily.filter(like="cal_dow").sum(axis=1).eq(1).all()
    np.testing.assert_allclose(daily["cal_year_sin"][0], 0.0, atol=1e-12)
    assert daily["cal_year_cos"][1] < -0.99  # mid-year
    assert "cal_dow0" not in calendar_columns(ds, "W-FRI")
    data = load_synthetic(n_segments=8, n_clusters=2, n_steps=120, freq="D")
    extended = with_calendar(data)
    added = [c for c in extended.frame.feature_cols if c.startswith("cal_")]
    assert extended.frame.feature_cols[: len(data.frame.feature_cols)] == data.frame.feature_cols
    assert len(added) == 21
    panel = to_panel(extended.frame)
    month = panel.feature_names.index("cal_month" + str(panel.dates[0].month))
    assert panel.values[:, 0, month][panel.observed[:, 0]].min() == 1.0
