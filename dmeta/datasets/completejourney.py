"""84.51 Complete Journey: two years of purchases of 2,469 households (parquet files).

Files: ``transactions.parquet``, ``products.parquet``, ``demographics.parquet``. Read by
CDLtvS (households' spend by department domain), Sales CNN (product x store x day) and C2M
(households' purchases, with brand and package size as item attributes).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.datasets import _csv

TX_IDS = ("household_id", "store_id", "basket_id", "product_id")
TX_NUMBERS = ("quantity", "sales_value", "retail_disc", "coupon_disc")
PRODUCT_TEXT = ("department", "product_category")
PRODUCT_OPTIONAL = ("brand", "product_type", "package_size")  # kept when the file has them


@dataclasses.dataclass(frozen=True, eq=False)
class CompleteJourney:
    """transactions: TX_IDS, TX_NUMBERS, timestamp, _line; products: product_id,
    manufacturer_id, department, product_category and those of PRODUCT_OPTIONAL present
    (text, NaN where empty); demographics: household_id + text columns."""

    transactions: pd.DataFrame
    products: pd.DataFrame
    demographics: pd.DataFrame
    path: Path


def load(path: str | Path, *, max_gap_days: float | None = _csv.MAX_GAP_DAYS) -> CompleteJourney:
    """Reads and checks the three parquet files in folder ``path``."""
    tx_path = _csv.find(path, ("transactions.parquet", "transactions.PARQUET"))
    folder = tx_path.parent
    raw = _csv.read(tx_path, required=(*TX_IDS, *TX_NUMBERS, "transaction_timestamp"))
    tx = pd.DataFrame({
        **{c: _csv.ids(raw, tx_path, c) for c in TX_IDS},
        **{c: _csv.numbers(raw, tx_path, c) for c in TX_NUMBERS},
        "timestamp": _csv.dates(raw, tx_path, "transaction_timestamp",
                                max_gap_days=max_gap_days),
        "_line": raw["_line"],
    })  # fmt: skip
    src = folder / "products.parquet"
    raw = _csv.read(src, required=("product_id", "manufacturer_id", *PRODUCT_TEXT))
    products = pd.DataFrame({
        "product_id": _csv.ids(raw, src, "product_id"),
        "manufacturer_id": _csv.ids(raw, src, "manufacturer_id"),
        **{c: raw[c].astype(object).where(raw[c].notna())
           for c in (*PRODUCT_TEXT, *PRODUCT_OPTIONAL) if c in raw.columns},
    })  # fmt: skip
    src = folder / "demographics.parquet"
    raw = _csv.read(src, required=("household_id",))
    demographics = raw.drop(columns="_line").assign(household_id=_csv.ids(raw, src, "household_id"))
    return CompleteJourney(tx, products, demographics, tx_path)
