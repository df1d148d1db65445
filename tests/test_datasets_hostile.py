"""Hostile input against every loader of the dataset registry (issue #17).

Each case x loader ends in a ``DataError`` naming the file, the column and the right
physical line, or in a repair logged with its location; never a third-party exception and
never a silent change. Property-based tests cover ids, dates and numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmeta.data.frames import DataError
from dmeta.datasets import LOADERS, _csv, table, transactions, validate

DAYS = [f"2021-03-{d:02d}" for d in range(1, 7)]
WEEKS = [f"2010-02-{d:02d}" for d in (5, 12, 19, 26)]
CAINIAO = ["date", "item_id", "cate_id", "cate_level_id", "brand_id", "supplier_id",
           *LOADERS["cainiao"].__globals__["INDICATORS"]]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Source:
    """A tiny valid dataset: ``files`` (name -> rows, the first row the header unless
    ``headerless``), the main file, its id / date / number columns (None: none) and
    whether malformed rows are dropped (event logs) instead of raising."""

    name: str
    main: str
    files: dict
    id: str | None
    date: str | None
    number: str | None
    drops: bool = False
    headerless: bool = False
    arg: str = ""  # the path given to the loader, relative to the folder ("": the folder)

    def columns(self) -> list[str]:
        return CAINIAO_HEADER if self.headerless else self.files[self.main][0]

    def write(self, folder: Path, main_text: str | None = None) -> Path:
        for name, rows in self.files.items():
            text = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
            (folder / name).write_text(main_text if name == self.main and main_text else text)
        return folder / self.arg if self.arg else folder

    def lines(self) -> list[list[str]]:
        return [list(map(str, r)) for r in self.files[self.main]]


CAINIAO_HEADER = ["user_id", "item_id", "category_id", "type", "timestamp"]
SOURCES = [
    Source(
        "walmart",
        "train.csv",
        {
            "train.csv": [["Store", "Dept", "Date", "Weekly_Sales", "IsHoliday"]]
            + [[s, 1, d, 100 + i, "FALSE"] for s in (1, 2) for i, d in enumerate(WEEKS)],
            "stores.csv": [["Store", "Type", "Size"], [1, "A", 100], [2, "B", 200]],
        },
        "Dept",
        "Date",
        "Weekly_Sales",
    ),
    Source(
        "groceries",
        "Groceries_dataset.csv",
        {
            "Groceries_dataset.csv": [["Member_number", "Date", "itemDescription"]]
            + [[m, f"0{d}-03-2021", f"item{m}"] for m in (1, 2) for d in range(1, 5)],
        },
        "Member_number",
        "Date",
        None,
    ),
    Source(
        "favorita",
        "transactions.csv",
        {
            "stores.csv": [
                ["store_nbr", "city", "state", "type", "cluster"],
                [1, "Q", "P", "D", 1],
            ],
            "transactions.csv": [["date", "store_nbr", "transactions"]]
            + [[d, 1, 10 + i] for i, d in enumerate(DAYS)],
            "holidays_events.csv": [
                ["date", "type", "locale", "locale_name", "description", "transferred"],
                [DAYS[0], "Holiday", "National", "E", "x", "False"],
            ],
        },
        None,
        "date",
        "transactions",
    ),
    Source(
        "table",
        "series.csv",
        {
            "series.csv": [["unique_id", "ds", "y"]]
            + [[u, d, i] for u in ("a", "b") for i, d in enumerate(DAYS)],
        },
        "unique_id",
        "ds",
        "y",
    ),
    Source(
        "transactions",
        "transactions.csv",
        {
            "transactions.csv": [["customer_id", "timestamp", "amount", "domain"]]
            + [
                [c, d, 1 + i, "source" if i % 2 else "target"]
                for c in (1, 2)
                for i, d in enumerate(DAYS)
            ],
        },
        "customer_id",
        "timestamp",
        "amount",
    ),
    Source(
        "cdnow",
        "transactions.csv",
        {
            "transactions.csv": [["customer_id", "timestamp", "amount"]]
            + [[c, d, 1 + i] for c in (1, 2) for i, d in enumerate(DAYS)],
        },
        "customer_id",
        "timestamp",
        "amount",
    ),
    Source(
        "events",
        "events.csv",
        {
            "events.csv": [["user_id", "item_id", "category_id", "behavior", "timestamp"]]
            + [[u, 10 + i, 5, "view", 1_600_000_000 + 60 * i] for u in (1, 2) for i in range(4)],
        },
        "user_id",
        None,
        "timestamp",
        drops=True,
    ),
    Source(
        "userbehavior",
        "ub.csv",
        {
            "ub.csv": [
                [u, 10 + i, 5, "pv", 1_600_000_000 + 60 * i] for u in (1, 2) for i in range(4)
            ],
        },
        "user_id",
        None,
        "timestamp",
        drops=True,
        headerless=True,
    ),
    Source(
        "jdata",
        "JData_Action_1.csv",
        {
            "JData_Action_1.csv": [
                ["user_id", "sku_id", "time", "model_id", "type", "cate", "brand"]
            ]
            + [[u, 10 + i, f"{DAYS[i]} 10:00:00", "", 1, 8, 3] for u in (1, 2) for i in range(4)],
        },
        "user_id",
        "time",
        None,
        drops=True,
    ),
    Source(
        "rees46",
        "r.csv",
        {
            "r.csv": [
                [
                    "event_time",
                    "event_type",
                    "product_id",
                    "category_id",
                    "category_code",
                    "brand",
                    "price",
                    "user_id",
                    "user_session",
                ]
            ]
            + [
                [f"{DAYS[i]} 10:00:00 UTC", "view", 10 + i, 5, "", "b", 1.5, u, "s"]
                for u in (1, 2)
                for i in range(4)
            ],
        },
        "user_id",
        "event_time",
        None,
        drops=True,
    ),
    Source(
        "itemlog",
        "log.csv",
        {
            "log.csv": [["item_id", "region_id", "ds", "sales"]]
            + [[it, "r1", d, i] for it in ("a", "b") for i, d in enumerate(DAYS)],
            "attributes.csv": [["item_id", "brand", "category"], ["a", "x", "c"], ["b", "y", "c"]],
        },
        "item_id",
        "ds",
        "sales",
    ),
    Source(
        "frat",
        "transaction.csv",
        {
            "transaction.csv": [
                [
                    "week_end_date",
                    "store_id",
                    "upc_id",
                    "units",
                    "visits",
                    "hhs",
                    "spend",
                    "price",
                    "base_price",
                    "feature",
                    "display",
                    "tpr_only",
                ]
            ]
            + [
                [d, 1, 7, i, 1, 1, 1.0, 1.0, 1.0, 0, 0, 0]
                for i, d in enumerate(["2009-01-14", "2009-01-21", "2009-01-28", "2009-02-04"])
            ],
            "product.csv": [["upc_id", "manufacturer", "category"], [7, "m", "c"]],
        },
        "store_id",
        "week_end_date",
        "units",
    ),
    Source(
        "cainiao",
        "item_feature1.csv",
        {
            "item_feature1.csv": [CAINIAO]
            + [[f"202103{d:02d}", 1, 2, 3, 4, 5, *[i] * 25] for i, d in enumerate(range(1, 5))],
        },
        "item_id",
        "date",
        "qty_alipay_njhs",
        arg="item_feature1.csv",
    ),
]
IDS = {s.name: s for s in SOURCES}


def _load(source: Source, path: Path):
    return LOADERS[source.name](path)


def _replace(source: Source, row: int, column: str, value: str) -> str:
    """The main file's text with ``column`` of data row ``row`` (0-based) set to ``value``."""
    lines = source.lines()
    header = None if source.headerless else lines[0]
    cols = CAINIAO_HEADER if source.headerless else header
    data = lines if source.headerless else lines[1:]
    data[row][cols.index(column)] = value
    rows = data if source.headerless else [header, *data]
    return "\n".join(",".join(r) for r in rows) + "\n"


def _outcome(source, path, caplog, *, line: int | None, column: str | None, repair: str = ""):
    """Runs the loader; asserts a located DataError or a logged, located repair."""
    with caplog.at_level(logging.WARNING):
        try:
            _load(source, path)
        except DataError as err:
            msg = str(err)
            assert source.main in msg or str(path) in msg, msg
            if column is not None:
                assert f"'{column}'" in msg, msg
            if line is not None:
                assert f"line {line}" in msg or f"lines {line}" in msg, msg
            return "error", msg
    text = caplog.text
    assert repair and repair in text, f"{source.name}: no error and no logged repair: {text}"
    if line is not None:
        assert f"line {line}" in text or f"lines {line}" in text, text
    return "repair", text


def _first_data_line(source):
    return 1 if source.headerless else 2


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_valid_fixture_loads(tmp_path, source):
    _load(source, source.write(tmp_path))


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_empty_and_header_only_files(tmp_path, source):
    path = source.write(tmp_path, " ")
    with pytest.raises(DataError, match=r"empty"):
        _load(source, path)
    if not source.headerless:
        path = source.write(tmp_path, ",".join(source.lines()[0]) + "\n")
        with pytest.raises(DataError, match=r"no data rows"):
            _load(source, path)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_ragged_rows_name_column_and_line(tmp_path, source, caplog):
    lines = source.lines()
    k = 2  # data row 2
    pos = k if source.headerless else k + 1
    short = [*lines[:pos], lines[pos][:-1], *lines[pos + 1 :]]
    text = "\n".join(",".join(r) for r in short) + "\n"
    line = pos + 1
    _outcome(source, source.write(tmp_path, text), caplog, line=line,
             column=source.columns()[-1])  # fmt: skip
    long = [*lines[:pos], [*lines[pos], "extra"], *lines[pos + 1 :]]
    text = "\n".join(",".join(r) for r in long) + "\n"
    _outcome(source, source.write(tmp_path, text), caplog, line=line, column=None)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_latin1_file_is_a_logged_repair(tmp_path, source, caplog):
    path = source.write(tmp_path)
    body = (tmp_path / source.main).read_bytes().rstrip(b"\n").split(b"\n")
    # a Latin-1 byte at the end of the last line (a text field for groceries, else an id)
    body[-1] = body[-1] + b"\xe9" if source.name == "groceries" else b"\xe9" + body[-1]
    (tmp_path / source.main).write_bytes(b"\n".join(body) + b"\n")
    with caplog.at_level(logging.WARNING):
        try:
            _load(source, path)
        except DataError as err:  # the byte made the first field invalid: located
            assert source.main in str(err) and f"line {len(body)}" in str(err)
    assert "decoded as Latin-1" in caplog.text and f"line {len(body)}" in caplog.text


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_a_folder_given_as_the_file(tmp_path, source):
    source.write(tmp_path)
    (tmp_path / source.main).unlink()
    (tmp_path / source.main).mkdir()
    target = tmp_path / source.arg if source.arg else tmp_path
    with pytest.raises(DataError, match=str(tmp_path)):
        _load(source, target)


@pytest.mark.parametrize("source", [s for s in SOURCES if s.number], ids=lambda s: s.name)
@pytest.mark.parametrize("value, what", [("ten", "not"), ("1e39", "float32"), ("inf", "inf")])
def test_bad_numbers_after_a_quoted_multiline_field(tmp_path, source, caplog, value, what):
    text = _replace(source, 3, source.number, value)
    lines = text.split("\n")
    first = _first_data_line(source) - 1
    cols = source.columns()
    # a quoted text field spanning two lines in the first data row (the id column or any)
    col = cols.index(source.id) if source.id else 1
    fields = lines[first].split(",")
    fields[col] = f'"{fields[col]}\n{fields[col]}"'
    lines[first] = ",".join(fields)
    text = "\n".join(lines)
    line = _first_data_line(source) + 3 + 1  # one extra physical line
    kind, msg = _outcome(source, source.write(tmp_path, text), caplog, line=line,
                         column=source.number, repair="dropped")  # fmt: skip
    assert kind == ("repair" if source.drops else "error")


@pytest.mark.parametrize("source", [s for s in SOURCES if s.date], ids=lambda s: s.name)
def test_a_typo_year_is_refused_not_filled(tmp_path, source, caplog):
    cols = source.columns()
    old = source.lines()[2][cols.index(source.date)]
    typo = old.replace("2021", "2120").replace("2010", "2110").replace("2009", "2109")
    text = _replace(source, 1, source.date, typo)
    kind, msg = _outcome(source, source.write(tmp_path, text), caplog, line=3,
                         column=source.date, repair="never")  # fmt: skip
    assert "gap" in msg


DAY_MONTH = ("walmart", "favorita", "table", "transactions", "cdnow", "itemlog", "frat")
AMBIGUOUS = ("favorita", "table", "transactions", "cdnow", "itemlog")  # fixture days <= 12


@pytest.mark.parametrize("name", AMBIGUOUS)
def test_ambiguous_day_month_dates_show_both_readings(tmp_path, name, caplog):
    source = IDS[name]
    col = source.columns().index(source.date)
    rows = source.lines()
    for r in rows[1:]:
        y, m, d = r[col].split("-")
        r[col] = f"{d}/{m}/{y}"  # all days <= 12 here except none: ambiguous
    text = "\n".join(",".join(r) for r in rows) + "\n"
    kind, msg = _outcome(source, source.write(tmp_path, text), caplog, line=None,
                         column=source.date, repair="never")  # fmt: skip
    assert "ambiguous" in msg and "month first" in msg and "day first" in msg


@pytest.mark.parametrize("name", DAY_MONTH)
def test_timezone_offsets_one_is_repaired_mixed_raise(tmp_path, name, caplog):
    source = IDS[name]
    col = source.columns().index(source.date)
    rows = source.lines()
    for r in rows[1:]:
        r[col] = f"{r[col]}T00:00:00+02:00"
    text = "\n".join(",".join(r) for r in rows) + "\n"
    kind, _ = _outcome(source, source.write(tmp_path, text), caplog, line=None,
                       column=source.date, repair="timezone")  # fmt: skip
    assert kind == "repair"
    rows[2][col] = rows[2][col].replace("+02:00", "+01:00")
    text = "\n".join(",".join(r) for r in rows) + "\n"
    with pytest.raises(DataError, match=rf"'{source.date}' mixes timezone offsets"):
        _load(source, source.write(tmp_path, text))


def test_event_logs_refuse_mixed_offsets_with_a_location(tmp_path):
    source = IDS["jdata"]
    text = _replace(source, 1, "time", f"{DAYS[1]} 10:00:00+02:00")
    with pytest.raises(DataError, match=r"'time' mixes timezone offsets.*line 3"):
        _load(source, source.write(tmp_path, text))


@pytest.mark.parametrize("ids", [["007", "7"], ["NA", "None"], ["1e30", "1.5"]])
@pytest.mark.parametrize("name", ["table", "transactions", "events", "userbehavior", "cdnow"])
def test_ids_stay_distinct_text(tmp_path, name, ids):
    source = IDS[name]
    col = source.id
    text = _replace(source, 0, col, ids[0])
    lines = text.split("\n")
    first = _first_data_line(source) - 1
    fields = lines[first + 1].split(",")
    fields[source.columns().index(col)] = ids[1]
    lines[first + 1] = ",".join(fields)
    loaded = _load(source, source.write(tmp_path, "\n".join(lines)))
    frame = next(getattr(loaded, f.name) for f in dataclasses.fields(loaded)
                 if isinstance(getattr(loaded, f.name), pd.DataFrame))  # fmt: skip
    column = {"table": "unique_id"}.get(name, col)
    assert set(ids) <= set(frame[column])


def test_capital_parquet_suffix_and_parquet_ids(tmp_path):
    frame = pd.DataFrame({"unique_id": ["007", "7"] * 3, "ds": sorted(DAYS[:3] * 2),
                          "y": np.arange(6.0)})  # fmt: skip
    frame.to_parquet(tmp_path / "T.PARQUET")
    loaded = table.load(tmp_path / "T.PARQUET")
    assert set(loaded.series["unique_id"]) == {"007", "7"}
    frame.assign(y=1e39).to_parquet(tmp_path / "big.PARQUET")
    with pytest.raises(DataError, match=r"big.PARQUET: column 'y', rows 1, 2.*float32"):
        table.load(tmp_path / "big.PARQUET")
    tz = pd.DataFrame(
        {
            "customer_id": ["1", "2"],
            "amount": [1.0, 2.0],
            "domain": "target",
            "timestamp": pd.to_datetime(DAYS[:2]).tz_localize("Europe/Paris"),
        }
    )
    tz.to_parquet(tmp_path / "tx.parquet")
    assert transactions.load(tmp_path / "tx.parquet").tx["timestamp"].dt.tz is None


@pytest.mark.parametrize("name", ["rossmann", "completejourney"])
def test_parquet_sources_name_missing_files(tmp_path, name):
    with pytest.raises(DataError, match=str(tmp_path)):
        LOADERS[name](tmp_path)


def test_exact_duplicates_are_logged(tmp_path, caplog):
    source = IDS["transactions"]
    rows = source.lines()
    text = "\n".join(",".join(r) for r in [*rows, rows[2]]) + "\n"
    with caplog.at_level(logging.WARNING):
        loaded = _load(source, source.write(tmp_path, text))
    assert len(loaded.tx) == len(rows)  # kept ...
    assert "1 exact duplicate rows" in caplog.text and f"line {len(rows) + 1}" in caplog.text


def test_validate_summarizes_rows_ids_dates_and_repairs(tmp_path):
    source = IDS["walmart"]
    summary = validate(f"walmart:{source.write(tmp_path)}")
    assert "train: 8 rows" in summary and "2 store" in summary
    assert "2010-02-05 .. 2010-02-26" in summary and "repairs: 0" in summary


# ----------------------------------------------------------------------------- properties

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
ID_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                                         blacklist_characters=',"\r\n'),
                  min_size=1, max_size=8)  # fmt: skip


@SETTINGS
@given(ids=st.lists(ID_TEXT, min_size=2, max_size=6, unique=True))
def test_any_distinct_ids_stay_distinct(tmp_path, ids):
    rows = [f"{i},{d},1" for i in ids for d in DAYS[:2]]
    (tmp_path / "p.csv").write_text("unique_id,ds,y\n" + "\n".join(rows) + "\n", "utf-8")
    series = table.load(tmp_path / "p.csv").series
    assert sorted(set(series["unique_id"])) == sorted(set(ids))


@SETTINGS
@given(day=st.integers(1, 28), month=st.integers(1, 12), fmt=st.sampled_from(["/", "-", "."]))
def test_day_month_dates_never_read_silently_wrong(tmp_path, day, month, fmt):
    frame = pd.DataFrame(
        {
            "_line": [2, 3],
            "ds": [f"{day:02d}{fmt}{month:02d}{fmt}2021", f"13{fmt}{month:02d}{fmt}2021"],
        }
    )
    got = _csv.dates(frame, "f.csv", "ds")  # the 13 decides: day first
    assert got.iloc[0] == pd.Timestamp(2021, month, day)
    one = frame.iloc[:1]
    if day != month and day <= 12:
        with pytest.raises(DataError, match="ambiguous"):
            _csv.dates(one, "f.csv", "ds")
    else:
        assert _csv.dates(one, "f.csv", "ds").iloc[0] == pd.Timestamp(2021, month, day)


@SETTINGS
@given(x=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)))
def test_numbers_are_finite_float32_or_a_located_error(x):
    frame = pd.DataFrame({"_line": [2, 7], "v": ["1", str(x)]})
    try:
        got = _csv.numbers(frame, "f.csv", "v")
    except DataError as err:
        assert "f.csv: column 'v', line 7" in str(err)
    else:
        assert np.isfinite(got).all() and np.abs(got).max() <= _csv.F32_MAX
        assert got[1] == float(str(x).strip())
