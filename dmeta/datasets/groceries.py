"""Kaggle Groceries: one row per item bought (member, dd-mm-yyyy date, item category).

Read by RMLDP: item categories' daily demand; (member, date) baskets give the
co-occurrence graph.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.datasets import _csv


@dataclasses.dataclass(frozen=True, eq=False)
class Groceries:
    """purchases: member, date, item, _line."""

    purchases: pd.DataFrame
    path: Path


def load(
    path: str | Path,
    *,
    date_format: str = "%d-%m-%Y",
    max_gap_days: float | None = _csv.MAX_GAP_DAYS,
) -> Groceries:
    """Reads ``Groceries_dataset.csv`` (``path`` is the file or its folder)."""
    path = Path(path)
    file = _csv.find(path, ("Groceries_dataset.csv", "*.csv")) if path.is_dir() else path
    raw = _csv.read(file, required=("Member_number", "Date", "itemDescription"))
    purchases = pd.DataFrame({
        "member": _csv.ids(raw, file, "Member_number"),
        "date": _csv.dates(raw, file, "Date", date_format=date_format, max_gap_days=max_gap_days),
        "item": _csv.text(raw, file, "itemDescription"),
        "_line": raw["_line"],
    })  # fmt: skip
    return Groceries(purchases, file)
