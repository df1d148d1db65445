"""CDLtvS on CDNOW: loader (master, sample, generic shapes; malformed rows), the classic
39/39-week split, and the single-domain experiment path at smoke size."""

import numpy as np
import pandas as pd
import pytest

from dmeta.data.frames import DataError
from dmeta.data.spec import data_root
from dmeta.datasets import cdnow
from dmeta.ltv.protocol import from_cdnow
from experiments import cdltvs


def read_cdnow(path):
    return cdnow.load(path).purchases.drop(columns="_line")


def load_cdnow(path):
    return from_cdnow(cdnow.load(path))


CDNOW = data_root() / "cdnow"
needs_cdnow = pytest.mark.skipif(
    not (CDNOW / "CDNOW_sample.txt").exists(),
    reason=f"shared CDNOW data not found at {CDNOW} (set DMETA_DATA)",
)
HOLDOUT_START = pd.Timestamp("1997-10-01")  # week 39 of the classic CDNOW split


def _purchases(n_customers: int, seed: int = 0) -> pd.DataFrame:
    """CDNOW-like purchases 1997-01-01 .. 1998-06-30; every customer buys in the first and
    the last week (so no window looks partial)."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("1997-01-01", "1998-06-30")
    rows = []
    for c in range(1, n_customers + 1):
        picks = rng.choice(len(days), rng.integers(0, 6), replace=False)
        for day in [days[c % 7], days[-1 - c % 7], *days[picks]]:
            rows.append((c, day, int(rng.integers(1, 4)), round(float(rng.gamma(2, 15)), 2)))
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "quantity", "amount"])


def _write_master(frame: pd.DataFrame, path, header: bool = True):
    lines = [" customer_id  date number_of_cds  dollar_value"] if header else []
    lines += [
        f" {c:05d} {t:%Y%m%d} {q:2d} {a:8.2f}"
        for c, t, q, a in frame[["customer_id", "timestamp", "quantity", "amount"]].itertuples(
            index=False
        )
    ]
    path.write_text("\n".join(lines) + "\n")


def _check_classic_split(data, frame):
    """History = 39 calibration weeks, label = spend from 1997-10-01, source domain empty."""
    assert data.t_series.shape == (data.n, 39) and data.horizon == 39
    frame = frame.assign(customer_id=frame["customer_id"].astype(np.int64))  # ids are text
    calib = frame[frame["timestamp"] < HOLDOUT_START].groupby("customer_id")["amount"].sum()
    hold = frame[frame["timestamp"] >= HOLDOUT_START].groupby("customer_id")["amount"].sum()
    np.testing.assert_allclose(
        data.t_series.sum(1), calib.reindex(data.customer.astype(int)), rtol=1e-5
    )
    np.testing.assert_allclose(
        data.t_y, hold.reindex(data.customer.astype(int), fill_value=0.0), rtol=1e-5
    )
    assert not data.s_series.any() and not data.s_y.any()


@needs_cdnow
def test_shared_sample_reads_and_matches_master():
    sample = read_cdnow(CDNOW / "CDNOW_sample.txt")
    assert len(sample) == 6919 and sample["customer_id"].nunique() == 2357
    assert sample["timestamp"].min() == pd.Timestamp("1997-01-01")
    assert sample["timestamp"].max() == pd.Timestamp("1998-06-30")
    master = read_cdnow(CDNOW)  # the folder reads the master file
    assert len(master) == 69659 and master["customer_id"].nunique() == 23570
    # the sample's first column is the master id: its purchases are the master's rows
    key = ["customer_id", "timestamp", "amount"]
    same = master[master["customer_id"].isin(sample["customer_id"])][key]
    pd.testing.assert_frame_equal(
        same.sort_values(key).reset_index(drop=True),
        sample[key].sort_values(key).reset_index(drop=True),
    )
    data = load_cdnow(CDNOW / "CDNOW_sample.txt")
    _check_classic_split(data, sample)
    assert data.n == np.unique(data.customer).size  # one sample per customer


def test_master_with_or_without_header_and_generic_csv_agree(tmp_path):
    frame = _purchases(30)
    _write_master(frame, tmp_path / "with.txt")
    _write_master(frame, tmp_path / "without.txt", header=False)
    frame.assign(domain="target").to_csv(tmp_path / "tx.csv", index=False)
    a = read_cdnow(tmp_path / "with.txt")
    pd.testing.assert_frame_equal(a, read_cdnow(tmp_path / "without.txt"))
    assert a.columns.tolist() == ["customer_id", "timestamp", "amount", "quantity"]
    data = load_cdnow(tmp_path / "with.txt")
    _check_classic_split(data, frame)
    generic = load_cdnow(tmp_path / "tx.csv")
    np.testing.assert_array_equal(generic.t_series, data.t_series)
    np.testing.assert_array_equal(generic.t_y, data.t_y)


def test_sample_format_uses_the_master_id(tmp_path):
    (tmp_path / "s.txt").write_text(
        " 00004 0001 19970101  2   29.33\n 00021 0002 19970118  1 9.5\n"
    )
    got = read_cdnow(tmp_path / "s.txt")
    assert got["customer_id"].tolist() == [
        "00004",
        "00021",
    ]  # ids are text and got["amount"].tolist() == [29.33, 9.5]
    assert got["quantity"].tolist() == [2.0, 1.0]


@pytest.mark.parametrize(
    "body, match",
    [
        (
            " 00001 19970101 1 11.77\n\n 00002 19971345 1 12.00\n",
            r"column 'date', line 3: .*19971345",
        ),
        (
            " 00001 19970101 1 11.77\n 00002 19970112 5 abc\n",
            r"column 'dollar_value', line 2: .*abc",
        ),
        (" 00001 19970101 x 11.77\n", r"column 'number_of_cds', line 1"),
        (" 00001 19970101 1 1e39\n", r"column 'dollar_value', line 1: is outside the float32"),
        (" 00001 19970101 1 11.77\n 00002 19970112 1\n", r"line 2: 3 fields, expected 4"),
        ("id date\n 00001 19970101 1\n", r"line 2: 3 fields; expected customer_id date"),
        ("customer_id date number_of_cds dollar_value\n", "no purchase rows"),
    ],
)
def test_malformed_cdnow_rows_name_file_line_and_column(tmp_path, body, match):
    path = tmp_path / "bad_master.txt"
    path.write_text(body)
    with pytest.raises(DataError, match=match) as err:
        read_cdnow(path)
    assert "bad_master.txt" in str(err.value)


def test_malformed_generic_rows_and_missing_files(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("customer_id,timestamp,amount\n1,1997-01-01,3.5\n2,not a date,4.0\n")
    with pytest.raises(ValueError, match=r"tx.csv: column 'timestamp', line 3"):
        read_cdnow(path)
    path.write_text("customer_id,timestamp,amount\n1,1997-01-01,3.5\n2,1997-01-02,four\n")
    with pytest.raises(ValueError, match=r"tx.csv: column 'amount', line 3: .*four"):
        read_cdnow(path)
    path.write_text("customer_id,timestamp,value\n1,1997-01-01,3.5\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['amount'\]"):
        read_cdnow(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of CDNOW_master.txt"):
        read_cdnow(tmp_path / "empty")


def test_cdnow_experiment_smoke_runs_single_domain(tmp_path):
    src = tmp_path / "cdnow"
    src.mkdir()
    _write_master(_purchases(120, seed=1), src / "CDNOW_master.txt")
    out = tmp_path / "out"
    df = cdltvs.run(
        cdltvs.get_config(smoke=True),
        data=f"cdnow:{src}",
        out=out,
        seeds=2,
        methods=("BG/NBD+GG", "ARIMA", "PTUPCDR", "LtvS", "CDLtvS"),
        fresh=False,
        command="dmeta run cdltvs --data cdnow --smoke",
    )
    table = df[df["metric"] == "nmae"]
    assert set(table["method"]) == {"BG/NBD+GG", "ARIMA", "LtvS"}  # no PTUPCDR, no CDLtvS
    assert set(df["group"]) == {"P=0%/all", "P=0%/C_a"} and set(df["experiment"]) == {"cdltvs"}
    assert np.isfinite(df["value"]).all()
    md = (out / "results.md").read_text()
    assert "PTUPCDR and DASL-style are not applicable" in md
    assert "| LtvS" in md and "| BG/NBD+GG" in md and "### LtvS vs BG/NBD+GG" in md
    assert (out / "fig7_scatter_experts.png").exists()
    assert not (out / "fig4_sparse_vs_nonsparse.png").exists()
