"""dunnhumby Breakfast at the Frat: weekly UPC x store sales (``transaction.csv(.gz)``) and
``product.csv`` (brand = manufacturer). Empty ``price`` / ``base_price`` cells are filled from
the other price column of the row, then from the previous week of the series (logged).
Read by Sales CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.datasets import _csv
from dmeta.datasets.itemlog import ItemLog, checked

INDICATORS = ("units", "visits", "hhs", "spend", "price", "base_price", "feature", "display",
              "tpr_only")  # fmt: skip


def load(path: str | Path, *, max_gap_days: float | None = _csv.MAX_GAP_DAYS) -> ItemLog:
    """Reads the Frat files in folder ``path``."""
    tx_path = _csv.find(path, ("transaction.csv.gz", "transaction.csv"))
    raw = _csv.read(tx_path, required=("week_end_date", "store_id", "upc_id", *INDICATORS))
    log = pd.DataFrame({
        "item_id": _csv.ids(raw, tx_path, "upc_id"),
        "region_id": _csv.ids(raw, tx_path, "store_id"),
        "ds": _csv.dates(raw, tx_path, "week_end_date", max_gap_days=max_gap_days),
        **{c: _csv.numbers(raw, tx_path, c, allow_empty=c in ("price", "base_price"))
           for c in INDICATORS},
        "_line": raw["_line"],
    })  # fmt: skip
    for a, b in (("price", "base_price"), ("base_price", "price")):
        gap = log[a].isna()
        if gap.any():
            log.loc[gap, a] = log.loc[gap, b]
            log[a] = log.groupby(["region_id", "item_id"])[a].ffill()
            _csv.repair(tx_path, f"{int(gap.sum())} empty {a!r} cells filled from {b!r} / "
                                 "the previous week")  # fmt: skip
    empty = log[["price", "base_price"]].isna().any(axis=1).to_numpy()
    _csv.check(log, tx_path, "price", empty, "is empty with no price to fill it from")
    src = tx_path.parent / "product.csv"
    raw = _csv.read(src, required=("upc_id", "manufacturer", "category"))
    attributes = pd.DataFrame({
        "item_id": _csv.ids(raw, src, "upc_id"),
        "brand": raw["manufacturer"].where(raw["manufacturer"].str.strip() != "", np.nan),
        "category": raw["category"].where(raw["category"].str.strip() != "", np.nan),
    })  # fmt: skip
    return checked(log, attributes, indicators=INDICATORS, target="units", freq="W-WED",
                   source=tx_path)  # fmt: skip
