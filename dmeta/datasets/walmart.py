"""Kaggle Walmart Recruiting: weekly sales of 45 stores x departments (2010-02 .. 2012-10).

Files: ``train.csv[.zip]`` (Store, Dept, Date, Weekly_Sales, IsHoliday), ``stores.csv``
(Store, Type, Size) and, optionally, ``features.csv`` (Store, Date, Temperature, Fuel_Price,
MarkDown1-5, CPI, Unemployment; empty markdowns, before Nov 2011, are read as 0, a logged
repair). Read by RMLDP (store x department segments) and STMP (stores as regions).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.datasets import _csv

FEATURES = ("Temperature", "Fuel_Price", "MarkDown1", "MarkDown2", "MarkDown3", "MarkDown4",
            "MarkDown5", "CPI", "Unemployment")  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Walmart:
    """train: store, dept, date, weekly_sales, holiday, _line; stores: store, type, size;
    features: store, date, one column per ``FEATURES`` (NaN where empty), _line, or None."""

    train: pd.DataFrame
    stores: pd.DataFrame
    features: pd.DataFrame | None
    train_path: Path
    features_path: Path


def load(path: str | Path, *, max_gap_days: float | None = _csv.MAX_GAP_DAYS) -> Walmart:
    """Reads and checks the Walmart files in folder ``path``."""
    train_path = _csv.find(path, ("train.csv", "train.csv.zip"))
    folder = train_path.parent
    raw = _csv.read(train_path, required=("Store", "Dept", "Date", "Weekly_Sales", "IsHoliday"))
    train = pd.DataFrame({
        "store": _csv.ids(raw, train_path, "Store"),
        "dept": _csv.ids(raw, train_path, "Dept"),
        "date": _csv.dates(raw, train_path, "Date", max_gap_days=max_gap_days),
        "weekly_sales": _csv.numbers(raw, train_path, "Weekly_Sales"),
        "holiday": _csv.flags(raw, train_path, "IsHoliday"),
        "_line": raw["_line"],
    })  # fmt: skip
    stores_path = folder / "stores.csv"
    raw = _csv.read(stores_path, required=("Store", "Type", "Size"))
    stores = pd.DataFrame({
        "store": _csv.ids(raw, stores_path, "Store"),
        "type": _csv.text(raw, stores_path, "Type"),
        "size": _csv.numbers(raw, stores_path, "Size", nonneg=True),
    })  # fmt: skip
    _csv.check(raw, stores_path, "Store", stores["store"].duplicated().to_numpy(), "repeats")
    unknown = ~train["store"].isin(stores["store"]).to_numpy()
    _csv.check(train, train_path, "store", unknown, "is not a store of stores.csv")
    features_path = folder / "features.csv"
    features = _features(features_path) if features_path.exists() else None
    return Walmart(train, stores, features, train_path, features_path)


def _features(path: Path) -> pd.DataFrame:
    raw = _csv.read(path, required=("Store", "Date", *FEATURES))
    out = pd.DataFrame({
        "store": _csv.ids(raw, path, "Store"),
        "date": _csv.dates(raw, path, "Date", max_gap_days=None),
        **{c: _csv.numbers(raw, path, c, allow_empty=True) for c in FEATURES},
        "_line": raw["_line"],
    })  # fmt: skip
    markdowns = [c for c in FEATURES if c.startswith("MarkDown")]
    n_empty = int(out[markdowns].isna().sum().sum())
    if n_empty:
        _csv.repair(path, f"{n_empty} missing MarkDown values read as 0 (no markdown)")
        out[markdowns] = out[markdowns].fillna(0.0)
    return out
