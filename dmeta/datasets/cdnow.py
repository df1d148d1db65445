"""CDNOW (Fader & Hardie): every purchase of the 23,570 customers who first bought in 1997-Q1.

Formats (whitespace-separated, one purchase per line, ``date`` as ``YYYYMMDD``):

- master: ``customer_id date number_of_cds dollar_value``, with or without a header line,
- sample (the 1/10 sample): ``customer_id sample_id date number_of_cds dollar_value``,
- the generic ``transactions`` shape: a csv/parquet with ``customer_id, timestamp, amount``
  (an optional ``domain`` column keeps its ``target`` rows).

``path`` may be a folder holding the first of ``FILES``. Read by CDLtvS (single domain).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import DataError
from dmeta.datasets import _csv, transactions

MASTER_COLUMNS = ("customer_id", "date", "number_of_cds", "dollar_value")
SAMPLE_COLUMNS = ("customer_id", "sample_id", "date", "number_of_cds", "dollar_value")
FILES = ("CDNOW_master.txt", "CDNOW_sample.txt", "transactions.csv", "transactions.parquet")


@dataclasses.dataclass(frozen=True, eq=False)
class CDNOW:
    """purchases: customer_id, timestamp, amount, quantity (NaN for generic files), _line."""

    purchases: pd.DataFrame
    path: Path


def load(path: str | Path, *, max_gap_days: float | None = _csv.MAX_GAP_DAYS) -> CDNOW:
    """Reads and checks the CDNOW purchases at ``path``."""
    path = Path(path)
    if path.is_dir():
        path = _csv.find(path, FILES)
    if path.suffix.lower() in (".csv", *_csv.PARQUET):
        loaded = transactions.load(path, require_domain=False, max_gap_days=max_gap_days)
        tx = loaded.tx[loaded.tx["domain"] == "target"]
        if len(tx) < len(loaded.tx):
            _csv.repair(path, f"kept the {len(tx)} of {len(loaded.tx)} rows of domain 'target'")
        if tx.empty:
            raise DataError(f"{path}: no (target) purchase rows")
        purchases = tx.drop(columns="domain").assign(quantity=np.nan)
    else:
        purchases = _read_whitespace(_csv.existing(path), max_gap_days)
    columns = ["customer_id", "timestamp", "amount", "quantity", "_line"]
    return CDNOW(purchases[columns].reset_index(drop=True), path)


def _read_whitespace(path: Path, max_gap_days: float | None) -> pd.DataFrame:
    """The master or sample format (chosen by the number of fields of the first data line)."""
    rows, lines = [], []
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                rows.append(fields)
                lines.append(lineno)
    if rows and not any(ch.isdigit() for ch in "".join(rows[0])):  # a header line
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataError(f"{path}: no purchase rows")
    formats = {len(MASTER_COLUMNS): MASTER_COLUMNS, len(SAMPLE_COLUMNS): SAMPLE_COLUMNS}
    columns = formats.get(len(rows[0]))
    if columns is None:
        raise DataError(f"{path}: line {lines[0]}: {len(rows[0])} fields; expected "
                        f"{' '.join(MASTER_COLUMNS)} (master) or {' '.join(SAMPLE_COLUMNS)} "
                        "(sample)")  # fmt: skip
    width = np.fromiter(map(len, rows), int, len(rows))
    if (width != len(columns)).any():
        i = int(np.argmax(width != len(columns)))
        raise DataError(f"{path}: line {lines[i]}: {width[i]} fields, expected {len(columns)} "
                        f"({' '.join(columns)})")  # fmt: skip
    raw = pd.DataFrame(rows, columns=list(columns)).assign(_line=lines)
    return pd.DataFrame({
        "customer_id": _csv.ids(raw, path, "customer_id"),
        "timestamp": _csv.dates(raw, path, "date", date_format="%Y%m%d",
                                max_gap_days=max_gap_days),
        "amount": _csv.numbers(raw, path, "dollar_value"),
        "quantity": _csv.numbers(raw, path, "number_of_cds"),
        "_line": raw["_line"],
    })  # fmt: skip
