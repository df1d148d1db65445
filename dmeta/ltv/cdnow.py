"""CDNOW (Fader & Hardie) as single-domain LTV data, in the classic BG/NBD split.

The CDNOW master file holds every purchase of the 23,570 customers whose first purchase was in
1997-Q1, from 1997-01-01 to 1998-06-30 (78 weeks). The classic BG/NBD setup (Fader, Hardie &
Lee 2005) calibrates on the first 39 weeks (to 1997-09-30) and predicts the next 39 (to
1998-06-30); :func:`load_cdnow` builds exactly that with weekly windows: one sample per customer,
39 weekly spend values as history, the holdout spend as the LTV label. The purchases are the
target domain; the source domain is empty (zeros): cross-domain methods do not apply.

Formats read by :func:`read_cdnow` (whitespace-separated, one purchase per line):

- master: ``customer_id date number_of_cds dollar_value``, with or without a header line,
- sample (the 1/10 sample): ``customer_id sample_id date number_of_cds dollar_value``,
- the generic ``transactions`` shape: a csv/parquet with ``customer_id, timestamp, amount``
  (an optional ``domain`` column keeps its ``target`` rows).

``date`` is ``YYYYMMDD``. A malformed row raises a ``ValueError`` naming file, line, column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.ltv.data import CrossDomainData, from_transactions

log = logging.getLogger(__name__)

MASTER_COLUMNS = ("customer_id", "date", "number_of_cds", "dollar_value")
SAMPLE_COLUMNS = ("customer_id", "sample_id", "date", "number_of_cds", "dollar_value")
FILES = ("CDNOW_master.txt", "CDNOW_sample.txt", "transactions.csv", "transactions.parquet")
GENERIC_SUFFIXES = (".csv", ".parquet")


def _check(ok: np.ndarray, raw: np.ndarray, where: Callable[[int], str], column: str, what: str):
    """Raises on the first row where ``ok`` is False: ``<where(i)>, column '<column>': ...``."""
    if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(f"{where(i)}, column {column!r}: {raw[i]!r} is not {what}")


def _read_whitespace(path: Path) -> pd.DataFrame:
    """The master or sample format (chosen by the number of fields of the first data line)."""
    rows, lines = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                rows.append(fields)
                lines.append(lineno)
    if rows and not any(ch.isdigit() for ch in "".join(rows[0])):  # a header line
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise ValueError(f"{path}: no purchase rows")
    formats = {len(MASTER_COLUMNS): MASTER_COLUMNS, len(SAMPLE_COLUMNS): SAMPLE_COLUMNS}
    columns = formats.get(len(rows[0]))
    if columns is None:
        raise ValueError(
            f"{path} line {lines[0]}: {len(rows[0])} fields; expected {' '.join(MASTER_COLUMNS)}"
            f" (master) or {' '.join(SAMPLE_COLUMNS)} (sample)"
        )
    width = np.fromiter(map(len, rows), int, len(rows))
    if (width != len(columns)).any():
        i = int(np.argmax(width != len(columns)))
        raise ValueError(
            f"{path} line {lines[i]}: {width[i]} fields, expected {len(columns)} "
            f"({' '.join(columns)})"
        )
    table = dict(zip(columns, np.asarray(rows, dtype=str).T, strict=True))

    def where(i):
        return f"{path} line {lines[i]}"

    raw = table["customer_id"]
    _check(np.char.isdigit(raw), raw, where, "customer_id", "an integer id")
    raw = table["date"]
    date = pd.to_datetime(pd.Series(raw), format="%Y%m%d", errors="coerce")
    _check(date.notna().to_numpy(), raw, where, "date", "a YYYYMMDD date")
    numbers = {}
    for name in ("number_of_cds", "dollar_value"):
        raw = table[name]
        numbers[name] = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(float)
        _check(np.isfinite(numbers[name]), raw, where, name, "a finite number")
    return pd.DataFrame(
        {
            "customer_id": table["customer_id"].astype(np.int64),
            "timestamp": date.to_numpy(),
            "amount": numbers["dollar_value"],
            "quantity": numbers["number_of_cds"],
        }
    )


def _read_generic(path: Path) -> pd.DataFrame:
    """``customer_id, timestamp, amount`` (+ optional ``domain``: its ``target`` rows)."""
    is_csv = path.suffix == ".csv"
    frame = pd.read_csv(path) if is_csv else pd.read_parquet(path)
    missing = [c for c in ("customer_id", "timestamp", "amount") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    if "domain" in frame.columns:
        target = frame["domain"].astype(str).to_numpy() == "target"
        log.info("%s: %d of %d rows are domain 'target' (kept)", path, target.sum(), len(target))
        frame = frame[target].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{path}: no (target) purchase rows")
    rows = frame.index.to_numpy()

    def where(i):
        return f"{path} line {rows[i] + 2}" if is_csv else f"{path} row {rows[i]}"

    raw = frame["timestamp"].astype(str).to_numpy()
    timestamp = pd.to_datetime(frame["timestamp"], errors="coerce")
    _check(timestamp.notna().to_numpy(), raw, where, "timestamp", "a timestamp")
    raw = frame["amount"].astype(str).to_numpy()
    amount = pd.to_numeric(frame["amount"], errors="coerce").to_numpy(float)
    _check(np.isfinite(amount), raw, where, "amount", "a finite number")
    return pd.DataFrame(
        {"customer_id": frame["customer_id"].to_numpy(), "timestamp": timestamp, "amount": amount}
    )


def read_cdnow(path: Path) -> pd.DataFrame:
    """Purchases as ``customer_id, timestamp, amount`` (+ ``quantity`` = CDs for CDNOW files).

    Args:
      path: a CDNOW master or sample file, a generic csv/parquet, or a folder holding the
        first of ``FILES`` that exists (the master file before the sample).

    Raises:
      FileNotFoundError: a folder without any of ``FILES``.
      ValueError: a malformed row (file, line and column named) or a missing column.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in FILES if (path / name).exists()]
        if not found:
            raise FileNotFoundError(f"{path}: none of {', '.join(FILES)}")
        path = found[0]
    frame = _read_generic(path) if path.suffix in GENERIC_SUFFIXES else _read_whitespace(path)
    log.info(
        "%s: %d purchases of %d customers, %s .. %s",
        path,
        len(frame),
        frame["customer_id"].nunique(),
        frame["timestamp"].min().date(),
        frame["timestamp"].max().date(),
    )
    return frame


def load_cdnow(
    path: Path,
    *,
    period_days: int = 7,
    n_periods: int = 39,
    horizon: int = 39,
    n_anchors: int = 1,
) -> CrossDomainData:
    """``--data cdnow[:PATH]``: single-domain samples, purchases in the target domain.

    Defaults give the classic split on CDNOW: weeks from 1997-01-01, history = the 39
    calibration weeks, label = spend in the 39 holdout weeks, one sample per customer. The
    source domain is all zeros (series, labels). Windows as in
    :func:`dmeta.ltv.data.from_transactions`; customers without spend in the history are
    dropped (logged; in CDNOW the 70 whose 1997-Q1 purchases are all $0).

    Args:
      path: see :func:`read_cdnow`.
      period_days: window length in days.
      n_periods: L history windows.
      horizon: future windows in the label.
      n_anchors: anchors per customer (1: the classic single calibration/holdout cut).
    """
    tx = read_cdnow(path)
    data = from_transactions(
        tx.assign(domain="target"),
        period_days=period_days,
        n_periods=n_periods,
        horizon=horizon,
        n_anchors=n_anchors,
    )
    dropped = tx["customer_id"].nunique() - len(np.unique(data.customer))
    if dropped:
        log.info("%d customers without spend in the history windows dropped", dropped)
    return data
