"""Markdown tables of results: the per-metric summary, any frame, paired significance tests."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from dmeta import metrics

logger = logging.getLogger(__name__)

TESTS = {"ttest": metrics.paired_ttest, "wilcoxon": metrics.wilcoxon}


def summary_markdown(summary: pd.DataFrame) -> str:
    """One row per ``(dataset, group, method)``, one ``mean ± std`` column per metric, ``n`` seeds."""
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
