"""Kaggle Rossmann store sales, merged with store.csv (``train_clean.parquet``).

Read by STMP: stores as regions, daily sales; closed days (Open = 0) are unobserved.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.datasets import _csv

COLUMNS = ("Store", "Date", "Sales", "Open", "Promo", "StateHoliday", "StoreType",
           "Assortment", "CompetitionDistance", "Promo2")  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Rossmann:
    """days: store, date, sales, open, promo, state_holiday (0/a/b/c), store_type,
    assortment, competition_distance (NaN where empty), promo2, _line."""

    days: pd.DataFrame
    path: Path


def load(path: str | Path, *, max_gap_days: float | None = _csv.MAX_GAP_DAYS) -> Rossmann:
    """Reads ``train_clean.parquet`` (``path`` is the file or its folder)."""
    path = Path(path)
    src = _csv.find(path, ("train_clean.parquet", "*.parquet", "*.PARQUET")) if path.is_dir() \
        else path  # fmt: skip
    raw = _csv.read(src, required=COLUMNS)
    holiday = _csv.text(raw, src, "StateHoliday")
    _csv.check(raw, src, "StateHoliday", ~holiday.isin(["0", "a", "b", "c"]).to_numpy(),
               "is not one of 0/a/b/c")  # fmt: skip
    days = pd.DataFrame({
        "store": _csv.ids(raw, src, "Store"),
        "date": _csv.dates(raw, src, "Date", max_gap_days=max_gap_days),
        "sales": _csv.numbers(raw, src, "Sales", nonneg=True),
        "open": _csv.numbers(raw, src, "Open") == 1,
        "promo": _csv.numbers(raw, src, "Promo") == 1,
        "state_holiday": holiday,
        "store_type": _csv.text(raw, src, "StoreType"),
        "assortment": _csv.text(raw, src, "Assortment"),
        "competition_distance": _csv.numbers(raw, src, "CompetitionDistance", allow_empty=True),
        "promo2": _csv.text(raw, src, "Promo2"),
        "_line": raw["_line"],
    })  # fmt: skip
    return Rossmann(days, src)
