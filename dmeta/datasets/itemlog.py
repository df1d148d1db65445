"""Generic item x region logs: ``DIR/log.csv`` (``item_id, region_id, ds`` + numeric
indicators, the first being the target) and ``DIR/attributes.csv`` (``item_id, brand,
category``). The period frequency is inferred from the dates (weekly data stays weekly).
``ItemLog`` is also what ``frat`` and ``cainiao`` give. Read by Sales CNN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import DataError, infer_freq
from dmeta.datasets import _csv

KEYS = ("item_id", "region_id", "ds")
ATTRIBUTES = ("item_id", "brand", "category")


@dataclasses.dataclass(frozen=True, eq=False)
class ItemLog:
    """log: item_id, region_id, ds, indicators..., _line (one row per key); attributes:
    item_id, brand, category (one row per item; empty brand/category 'unknown')."""

    log: pd.DataFrame
    attributes: pd.DataFrame
    indicators: tuple[str, ...]
    target: str
    freq: str
    path: Path


def checked(
    log: pd.DataFrame,
    attributes: pd.DataFrame,
    *,
    indicators: Sequence[str],
    target: str,
    freq: str | None,
    source,
) -> ItemLog:
    """An ``ItemLog`` from a converted log: duplicate keys and items without attributes
    raise; empty brand / category become 'unknown' (logged); ``freq`` None is inferred."""
    dup = log.duplicated(list(KEYS), keep=False).to_numpy()
    _csv.check(log, source, "ds", dup, "repeats an (item_id, region_id, ds) key",
               log["item_id"].astype(str) + "/" + log["region_id"].astype(str) + "/"
               + log["ds"].astype(str))  # fmt: skip
    attributes = attributes[list(ATTRIBUTES)].drop_duplicates("item_id").reset_index(drop=True)
    for col in ("brand", "category"):
        gap = attributes[col].isna() | (attributes[col].astype(str).str.strip() == "")
        if gap.any():
            _csv.repair(
                f"{source} attributes", f"{int(gap.sum())} empty {col!r} cells set to 'unknown'"
            )
            attributes[col] = attributes[col].astype(object).where(~gap, "unknown")
    unknown = ~log["item_id"].isin(attributes["item_id"]).to_numpy()
    _csv.check(log, source, "item_id", unknown, "is an item without attributes")
    if freq is None:  # the most common step between the distinct dates of the whole log
        days = pd.Series(np.unique(log["ds"].to_numpy()))
        freq = infer_freq(days, pd.Series(np.zeros(len(days))), str(source))
    return ItemLog(log, attributes, tuple(indicators), target, freq, Path(str(source)))


def load(
    path: str | Path,
    *,
    date_format: str | None = None,
    freq: str | None = None,
    max_gap_days: float | None = _csv.MAX_GAP_DAYS,
) -> ItemLog:
    """Reads ``log.csv`` and ``attributes.csv`` in folder ``path``."""
    log_path = _csv.find(path, ("log.csv", "log.parquet"))
    raw = _csv.read(log_path, required=KEYS)
    indicators = [c for c in raw.columns if c not in (*KEYS, "_line")]
    if not indicators:
        raise DataError(f"{log_path}: no indicator columns besides {list(KEYS)}")
    log = pd.DataFrame({
        "item_id": _csv.ids(raw, log_path, "item_id"),
        "region_id": _csv.ids(raw, log_path, "region_id"),
        "ds": _csv.dates(raw, log_path, "ds", date_format=date_format, max_gap_days=max_gap_days),
        **{c: _csv.numbers(raw, log_path, c) for c in indicators},
        "_line": raw["_line"],
    })  # fmt: skip
    attr_path = log_path.parent / "attributes.csv"
    raw = _csv.read(attr_path, required=ATTRIBUTES)
    attributes = pd.DataFrame({
        "item_id": _csv.ids(raw, attr_path, "item_id"),
        "brand": _csv.text(raw, attr_path, "brand", allow_empty=True),
        "category": _csv.text(raw, attr_path, "category", allow_empty=True),
    })  # fmt: skip
    return checked(log, attributes, indicators=indicators, target=indicators[0], freq=freq,
                   source=log_path)  # fmt: skip
