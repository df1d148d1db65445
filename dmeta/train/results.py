"""Run outputs: the exact command and config, a long results table, its summary, paired tests.

Every experiment writes results in one long schema, one row per measured number::

    experiment, dataset, method, group, seed, metric, value

``group`` is a free sub-division (a segment, a horizon, a customer cohort; use ``"all"``
when there is none). ``write_results`` validates it, writes ``results.csv`` and a
``results.md`` summary (mean ± std over seeds), and ``significance_table`` compares
two methods with paired tests from ``dmeta.metrics``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.train.checkpoint import save_config

logger = logging.getLogger(__name__)

COLUMNS = ("experiment", "dataset", "method", "group", "seed", "metric", "value")
KEYS = COLUMNS[:-1]
SUMMARY_KEYS = ("experiment", "dataset", "group", "method", "metric")
TESTS = {"ttest": metrics.paired_ttest, "wilcoxon": metrics.wilcoxon}


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
        parts.append(f"## {experiment}\n\n{_summary_markdown(part)}")
    if extra_md:
        parts.append(extra_md.strip() + "\n")
    (out_dir / "results.md").write_text("\n".join(parts))
    return summary


def _summary_markdown(summary: pd.DataFrame) -> str:
    metric_names = list(dict.fromkeys(summary["metric"]))
    rows = []
    for (dataset, group, method), part in summary.groupby(
        ["dataset", "group", "method"], sort=False, dropna=False
    ):
        cells = dict(zip(part["metric"], zip(part["mean"], part["std"])))
        n_lo, n_hi = int(part["n"].min()), int(part["n"].max())
        rows.append(
            [str(dataset), str(group), str(method)]
            + [_mean_std(*cells[m]) if m in cells else "" for m in metric_names]
            + [str(n_lo) if n_lo == n_hi else f"{n_lo}-{n_hi}"]
        )
    return _markdown(["dataset", "group", "method", *metric_names, "n"], rows)


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """Formats a frame as a GitHub markdown table (no index); floats with ``floatfmt``."""
    rows = [
        [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        for row in df.itertuples(index=False)
    ]
    return _markdown([str(c) for c in df.columns], rows)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    table = [[esc(c) for c in header], *([esc(c) for c in row] for row in rows)]
    widths = [max(3, *(len(r[i]) for r in table)) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in table]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines) + "\n"


def significance_table(
    df: pd.DataFrame,
    method_a: str,
    method_b: str,
    metric: str,
    *,
    by: Sequence[str] = ("dataset", "group"),
    test: Literal["ttest", "wilcoxon"] = "ttest",
    pair_on: str = "seed",
) -> pd.DataFrame:
    """Paired test of ``metric`` between two methods within each ``by`` cell.

    Within a cell, the rows of both methods are matched on ``pair_on`` (the seed, or
    e.g. a per-segment id stored in ``group`` with ``by=("dataset",)``); units present
    for only one method are dropped with a warning. A cell with fewer than 2 pairs gets
    NaN ``statistic`` and ``p_value`` (logged).

    Args:
      df: long results frame (see ``write_results``).
      method_a: first method; ``diff = mean_a - mean_b``.
      method_b: second method.
      metric: which metric to compare.
      by: columns defining the cells (may be empty for a single test).
      test: ``"ttest"`` (``metrics.paired_ttest``) or ``"wilcoxon"`` (``metrics.wilcoxon``).
      pair_on: the column whose values identify paired units.

    Returns:
      Frame with columns ``*by, mean_a, mean_b, diff, statistic, p_value, n``.

    Raises:
      ValueError: unknown test, missing columns, ``pair_on`` in ``by``, no rows for a
        method/metric, or several rows for one (cell, unit, method).
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {list(TESTS)}, got {test!r}")
    by = list(by)
    missing = [c for c in [*by, pair_on, "method", "metric", "value"] if c not in df.columns]
    if missing:
        raise ValueError(f"results frame lacks column(s) {missing}")
    if pair_on in by:
        raise ValueError(f"pair_on={pair_on!r} cannot also be a `by` column")
    sel = df[(df["metric"] == metric) & df["method"].isin([method_a, method_b])]
    for m in (method_a, method_b):
        if not (sel["method"] == m).any():
            raise ValueError(f"no rows for method={m!r}, metric={metric!r}")
    dup = sel.duplicated([*by, pair_on, "method"], keep=False)
    if dup.any():
        raise ValueError(
            f"several rows per ({', '.join([*by, pair_on])}, method) at index "
            f"{sel.index[dup].tolist()[:10]}; aggregate them first (e.g. mean over seeds)"
        )
    out = []
    cells = sel.groupby(by, sort=False, dropna=False) if by else [((), sel)]
    for key, cell in cells:
        key = key if isinstance(key, tuple) else (key,)
        wide = cell.pivot(index=pair_on, columns="method", values="value")
        wide = wide.reindex(columns=[method_a, method_b])
        paired = wide.dropna()
        if len(paired) < len(wide):
            logger.warning(
                "%s=%s: %d unit(s) of %r without a pair dropped",
                by,
                key,
                len(wide) - len(paired),
                pair_on,
            )
        a, b = paired[method_a].to_numpy(), paired[method_b].to_numpy()
        if len(paired) >= 2:
            statistic, p_value = TESTS[test](a, b)
        else:
            logger.warning("%s=%s: %d pair(s), no test", by, key, len(paired))
            statistic, p_value = math.nan, math.nan
        mean_a, mean_b = (float(np.mean(v)) if len(v) else math.nan for v in (a, b))
        out.append([*key, mean_a, mean_b, mean_a - mean_b, statistic, p_value, len(paired)])
    columns = [*by, "mean_a", "mean_b", "diff", "statistic", "p_value", "n"]
    return pd.DataFrame(out, columns=columns)
