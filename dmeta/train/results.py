"""The long results schema, its validation and its summary over seeds.

Every experiment writes results in one long schema, one row per measured number::

    experiment, dataset, method, group, seed, metric, value

``group`` is a free sub-division (a segment, a horizon, a customer cohort; use ``"all"``
when there is none). ``dmeta.train.harness`` writes ``results.csv``; ``dmeta.report``
renders it (``summary_markdown``, ``significance_table`` in ``dmeta.report.tables``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

COLUMNS = ("experiment", "dataset", "method", "group", "seed", "metric", "value")
KEYS = COLUMNS[:-1]
SUMMARY_KEYS = ("experiment", "dataset", "group", "method", "metric")


def read_rows(path) -> pd.DataFrame:
    """A long-schema CSV (a run's ``results.csv`` or one cell's), ids and groups kept as text."""
    return pd.read_csv(path, dtype={"group": str, "dataset": str})


def validate_results(df: pd.DataFrame) -> pd.DataFrame:
    """Checks the long results schema; returns a copy with ``value`` as float64.

    Raises:
      ValueError: a missing column (named), a non-numeric ``value`` (row named), or a
        duplicated key ``experiment..metric`` (rows named).
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results frame lacks column(s) {missing}; need {list(COLUMNS)}")
    df = df.reset_index(drop=True)
    value = pd.to_numeric(df["value"], errors="coerce")
    bad = value.isna() & df["value"].notna()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"results column 'value' row {row}: not a number: {df['value'][row]!r}")
    dup = df.duplicated(list(KEYS), keep=False)
    if dup.any():
        raise ValueError(f"results rows {np.flatnonzero(dup).tolist()} repeat the same {KEYS}")
    return df.assign(value=value.astype(np.float64))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and seed count per summary key.

    Non-finite values are left out (logged as a warning with their rows).

    Returns:
      Frame with columns ``experiment, dataset, group, method, metric, mean, std, n``,
      rows in order of first appearance.
    """
    finite = np.isfinite(df["value"].to_numpy())
    if not finite.all():
        logger.warning(
            "results rows %s have non-finite values; left out of the summary",
            np.flatnonzero(~finite).tolist(),
        )
    grouped = df[finite].groupby(list(SUMMARY_KEYS), sort=False, dropna=False)["value"]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()
