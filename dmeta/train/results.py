"""Run outputs: the exact command and config, a long results table, its summary, paired tests.

Every experiment writes results in one long schema, one row per measured number::

    experiment, dataset, method, group, seed, metric, value

``group`` is a free sub-division (a segment, a horizon, a customer cohort; use ``"all"``
when there is none). ``write_results`` validates it, writes ``results.csv`` and a
``results.md`` summary (mean ± std over seeds), and ``significance_table`` compares
two methods with paired tests (``dmeta.report.tables``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmeta.report.tables import summary_markdown
from dmeta.train.checkpoint import save_config

logger = logging.getLogger(__name__)

COLUMNS = ("experiment", "dataset", "method", "group", "seed", "metric", "value")
KEYS = COLUMNS[:-1]
SUMMARY_KEYS = ("experiment", "dataset", "group", "method", "metric")


def write_run_header(out_dir: str | os.PathLike, command: str, config: dict[str, Any]) -> None:
    """Writes ``out_dir/command.txt`` (the exact command) and ``out_dir/config.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "command.txt").write_text(command.rstrip("\n") + "\n")
    save_config(out_dir, config)


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


def write_results(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    title: str | None = None,
    extra_md: str = "",
) -> pd.DataFrame:
    """Validates and writes ``out_dir/results.csv`` and ``out_dir/results.md``.

    The markdown has one table per experiment: rows ``(dataset, group, method)``, one
    column per metric holding ``mean ± std`` over seeds, and a column ``n`` with the
    number of seeds (``min-max`` when metrics differ). ``extra_md`` is appended
    (e.g. ``markdown_table(significance_table(...))``).

    Args:
      df: long results frame with columns ``experiment, dataset, method, group, seed,
        metric, value``.
      out_dir: output folder (created).
      title: markdown heading; defaults to ``"Results"``.
      extra_md: markdown appended after the tables.

    Returns:
      The summary frame of ``summarize``.

    Raises:
      ValueError: see ``validate_results``.
    """
    df = validate_results(df)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "results.csv", index=False)
    summary = summarize(df)
    parts = [f"# {title or 'Results'}\n"]
    for experiment, part in summary.groupby("experiment", sort=False, dropna=False):
        parts.append(f"## {experiment}\n\n{summary_markdown(part)}")
    if extra_md:
        parts.append(extra_md.strip() + "\n")
    (out_dir / "results.md").write_text("\n".join(parts))
    return summary
