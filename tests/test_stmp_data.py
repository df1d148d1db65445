"""STMP loaders: favorita on the shared data (holidays applied to the right stores), bad input."""

import numpy as np
import pandas as pd
import pytest

from dmeta import datasets as ds
from dmeta.data.frames import DataError
from dmeta.data.spec import data_root
from dmeta.stmp import protocol as P

FAVORITA = data_root() / "favorita_store_sales"


@pytest.fixture(scope="module")
def favorita():
    if not (FAVORITA / "transactions.csv").exists():
        pytest.skip(f"favorita data not found at {FAVORITA}")
    return P.from_favorita(ds.favorita.load(FAVORITA))


def kinds(data, day):
    t = data.dates.get_loc(pd.Timestamp(day))
    return dict(zip(data.regions, np.asarray(data.type_names)[data.date_type[:, t]]))


def test_favorita_shapes_and_calendar(favorita):
    assert favorita.y.shape == (54, 1688) and favorita.attrs.shape[0] == 54
    assert set(kinds(favorita, "2016-11-25").values()) == {"black_friday"}
    assert set(kinds(favorita, "2016-12-24").values()) == {"christmas_eve"}
    assert set(kinds(favorita, "2017-01-02").values()) == {"new_year"}  # transferred holiday
    t = favorita.dates.get_loc(pd.Timestamp("2016-12-25"))
    assert not favorita.observed[:, t].any()  # stores closed: no transactions rows


def test_favorita_local_and_regional_holidays_hit_their_stores_only(favorita):
    manta = kinds(favorita, "2013-03-02")  # Fundacion de Manta, a Saturday
    assert manta["store52"] == manta["store53"] == "local_holiday"
    others = {k for s, k in manta.items() if s not in ("store52", "store53")}
    assert others == {"weekend"}
    stores = pd.read_csv(FAVORITA / "stores.csv")
    cotopaxi = {f"store{s}" for s in stores.loc[stores.state == "Cotopaxi", "store_nbr"]}
    regional = kinds(favorita, "2013-04-01")  # Provincializacion de Cotopaxi
    assert cotopaxi and {regional[s] for s in cotopaxi} == {"regional_holiday"}
    assert "regional_holiday" not in {k for s, k in regional.items() if s not in cotopaxi}


def write_favorita(tmp_path, transactions=None, holidays=None):
    pd.DataFrame(
        {
            "store_nbr": [1, 2],
            "city": ["Quito", "Manta"],
            "state": ["Pichincha", "Manabi"],
            "type": ["D", "A"],
            "cluster": [13, 11],
        }  # fmt: skip
    ).to_csv(tmp_path / "stores.csv", index=False)
    tx = transactions or (
        "date,store_nbr,transactions\n"
        + "".join(f"2013-01-{d:02d},{s},{100 + d}\n" for d in range(1, 11) for s in (1, 2))
    )
    (tmp_path / "transactions.csv").write_text(tx)
    hol = holidays or (
        "date,type,locale,locale_name,description,transferred\n"
        "2013-01-05,Holiday,Local,Manta,Fundacion de Manta,False\n"
        "2013-01-01,Holiday,National,Ecuador,Primer dia del ano,False\n"
    )
    (tmp_path / "holidays_events.csv").write_text(hol)
    return tmp_path


def test_favorita_tiny_files(tmp_path):
    data = P.from_favorita(ds.favorita.load(write_favorita(tmp_path)))
    assert data.y.shape == (2, 10) and data.observed.all()
    names = np.asarray(data.type_names)
    assert list(names[data.date_type[:, 4]]) == ["weekend", "local_holiday"]
    assert list(names[data.date_type[:, 0]]) == ["new_year", "new_year"]


@pytest.mark.parametrize(
    "tx, hol, match",
    [
        ("date,store_nbr,transactions\n2013-01-01,1,5\n2013-01-02,1,-3\n", None,
         r"transactions.csv: column 'transactions', line 3: is negative"),
        ("date,store_nbr,transactions\n2013-01-01,1,5\n2013-13-45,1,3\n", None,
         r"transactions.csv: column 'date', line 3: is not a date"),
        ("date,store_nbr,transactions\n2013-01-01,1,5\n2013-01-02,9,3\n", None,
         r"transactions.csv: column 'store_nbr', line 3: is not a store of stores.csv"),
        ("date,store_nbr,transactions\n2013-01-01,1,5\n2013-01-01,1,3\n", None,
         r"transactions.csv: column 'date', line 3: repeats"),
        ("date,store_nbr,count\n2013-01-01,1,5\n", None, r"missing column\(s\) \['transactions'\]"),
        (None, "date,type,locale,locale_name,description,transferred\n"
               "2013-01-05,Holiday,Planet,Manta,x,False\n",
         r"holidays_events.csv: column 'locale', line 2: is not National/Regional/Local"),
    ],
)  # fmt: skip
def test_favorita_bad_input_names_file_column_row(tmp_path, tx, hol, match):
    with pytest.raises(DataError, match=match):
        P.from_favorita(ds.favorita.load(write_favorita(tmp_path, tx, hol)))


def test_walmart_holiday_weeks():
    path = data_root() / "walmart_recruiting"
    if not (path / "train.csv.zip").exists():
        pytest.skip(f"walmart data not found at {path}")
    data = P.from_walmart(ds.walmart.load(path))
    assert data.y.shape == (45, 143) and data.n_regular == 1 and data.observed.all()
    names = np.asarray(data.type_names)
    assert (
        names[data.date_type[0, data.dates.get_loc(pd.Timestamp("2010-11-26"))]] == "thanksgiving"
    )
    assert names[data.date_type[0, data.dates.get_loc(pd.Timestamp("2012-02-10"))]] == "super_bowl"
    assert (data.date_type[:, 1:] == data.date_type[:1, 1:]).all()  # national holidays


def test_rossmann_holidays_promos_and_closed_days():
    path = data_root() / "rossmann"
    if not (path / "train_clean.parquet").exists():
        pytest.skip(f"rossmann data not found at {path}")
    data = P.from_rossmann(ds.rossmann.load(path), max_stores=3)
    assert data.y.shape[0] == 3
    names = np.asarray(data.type_names)
    t = data.dates.get_loc(pd.Timestamp("2015-07-31"))  # a Friday promo day for store 1
    assert names[data.date_type[0, t]] == "promo" and data.observed[0, t]
    t = data.dates.get_loc(pd.Timestamp("2013-12-25"))
    assert names[data.date_type[0, t]] == "christmas" and not data.observed[0, t]
    # stores 291, 622 and 879 have no CompetitionDistance: filled, the column stays finite
    assert np.isfinite(P.from_rossmann(ds.rossmann.load(path), max_stores=300).attrs).all()


def write_table(tmp_path, calendar):
    pd.DataFrame({"unique_id": ["a", "b"], "size": [1.0, 3.0], "kind": ["x", "y"]}).to_csv(
        tmp_path / "regions.csv", index=False
    )
    dates = pd.date_range("2020-01-01", periods=10)
    pd.DataFrame(
        {
            "unique_id": np.repeat(["a", "b"], 10),
            "ds": np.tile(dates.strftime("%Y-%m-%d"), 2),
            "y": np.arange(20.0),
        }  # fmt: skip
    ).to_csv(tmp_path / "series.csv", index=False)
    (tmp_path / "calendar.csv").write_text(calendar)
    return tmp_path


def test_table_loader_with_region_specific_days(tmp_path):
    cal = "ds,date_type,unique_id\n2020-01-02,fair,b\n2020-01-06,sale,\n"
    data = P.from_table(ds.table.load(write_table(tmp_path, cal)))
    names = np.asarray(data.type_names)
    assert list(names[data.date_type[:, 1]]) == ["weekday", "fair"]
    assert list(names[data.date_type[:, 5]]) == ["sale", "sale"]
    assert data.attrs.shape == (2, 3) and data.y[1, 0] == 10.0


def test_table_loader_bad_region_names_line(tmp_path):
    cal = "ds,date_type,unique_id\n2020-01-02,fair,b\n2020-01-06,sale,zz\n"
    with pytest.raises(
        DataError,
        match=r"calendar.csv: column 'unique_id', line 3: is not in regions.csv \(values 'zz'\)",
    ):
        P.from_table(ds.table.load(write_table(tmp_path, cal)))


def test_closed_days_read_as_the_same_weekday_a_week_earlier():
    """``closed_days="last_week"`` fills only the input series, causally, and leaves the
    targets, the flags and every other array as they were."""
    from dmeta.stmp import data as D

    ys = np.arange(1.0, 22.0)[None, :]  # one region, 21 days
    observed = np.ones_like(ys, dtype=bool)
    observed[0, [3, 9, 16]] = False  # day 16 reads day 9, itself filled from day 2
    filled = D.fill_last_period(np.where(observed, ys, 0.0), observed, 7)
    np.testing.assert_array_equal(filled[0, [3, 9, 16]], [0.0, 3.0, 3.0])
    np.testing.assert_array_equal(filled[observed], ys[observed])
    early = D.fill_last_period(np.where(observed, ys, 0.0)[:, :12], observed[:, :12], 7)
    np.testing.assert_array_equal(early, filled[:, :12])  # no later day changes an earlier

    panel = D.make_synthetic(n_regions=3, n_days=200, n_festivals=2, seed=1)
    panel.observed[:, 100] = False
    panel.y[:, 100] = 0.0
    zero, last = (D.prepare(panel, cutoff=150, window=28, closed_days=fill)
                  for fill in ("zero", "last_week"))  # fmt: skip
    np.testing.assert_array_equal(zero.arrays.ys_in, zero.arrays.ys)
    np.testing.assert_array_equal(last.arrays.ys, zero.arrays.ys)
    np.testing.assert_allclose(last.arrays.ys_in[:, 100], last.arrays.ys[:, 93])
    window = D.window(last.arrays, 0, 110, 28)
    assert window[100 - 82, 1] == 0.0 and window[100 - 82, 0] == last.arrays.ys[0, 93]
    with pytest.raises(ValueError, match="closed_days"):
        D.prepare(panel, cutoff=150, window=28, closed_days="mean")
