"""Did the trained methods converge? A table from the fit curves a run saved.

The harness saves every fit's log rows as ``curves/<cell>/<fit>.csv`` (``dmeta.train.loop``).
A fit counts as converged when its monitored curve (the first ``val*`` column, else the train
``loss``) improved by less than ``FLAT`` of its value over the last quarter of its rows. That
fall is read from the quarter's first value, so a noisy plateau after the best epoch of an
early-stopped fit can fail it; the table also counts the fits whose best value improved by
less than ``FLAT`` in the last quarter (:func:`last_quarter_best_gain`), which such a plateau
passes and a curve still setting new lows does not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.report.tables import markdown_table
from dmeta.train.harness import Cell

FLAT = 0.02
MIN_ROWS = 4


def _monitored(curve: pd.DataFrame) -> str | None:
    names = [c for c in curve.columns if c.startswith("val")] or [
        c for c in ("loss",) if c in curve.columns
    ]
    return names[0] if names else None


def _last_quarter(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``values`` f32[n] split into (before, within) their last ``ceil(n / 4)``; None with
    fewer than ``MIN_ROWS`` values."""
    values = np.asarray(values, np.float64)
    if len(values) < MIN_ROWS:
        return None
    quarter = -(-len(values) // 4)
    return values[:-quarter], values[-quarter:]


def last_quarter_gain(values: np.ndarray) -> float:
    """Relative improvement (drop) of ``values`` f32[n] over their last quarter: ``(first -
    min) / |first|`` of the last ``ceil(n / 4)`` values and the one they start from (NaN with
    fewer than ``MIN_ROWS`` values)."""
    split = _last_quarter(values)
    if split is None:
        return float("nan")
    first = split[0][-1]
    return float((first - min(first, np.min(split[1]))) / max(abs(first), 1e-12))


def last_quarter_best_gain(values: np.ndarray) -> float:
    """Relative improvement of the best (lowest) of ``values`` f32[n] in their last
    ``ceil(n / 4)``: ``(best before - best within) / |best before|``, negative when the quarter
    stays above the earlier best (NaN with fewer than ``MIN_ROWS`` values)."""
    split = _last_quarter(values)
    if split is None:
        return float("nan")
    before, within = np.min(split[0]), np.min(split[1])
    return float((before - within) / max(abs(before), 1e-12))


def fits(run_dir: str | os.PathLike, methods: Iterable[str] = ()) -> pd.DataFrame:
    """One row per saved curve: ``method, cell, fit, metric, rows, gain, converged, best_gain,
    best_flat``
    (``methods``: the run's method names, to undo the cell folders' file-name spelling)."""
    slugs = {Cell(m, 0, "").key.removeprefix("__").removesuffix("__seed0"): m for m in methods}
    rows = []
    for path in sorted(Path(run_dir).glob("curves/*/*.csv")):
        try:
            curve = pd.read_csv(path)
        except pd.errors.EmptyDataError:  # a fit stopped (diverged) before its first row
            curve = pd.DataFrame({"loss": []})
        metric = _monitored(curve)
        if metric is None:
            continue
        values = curve[metric].dropna().to_numpy()
        gain, best_gain = last_quarter_gain(values), last_quarter_best_gain(values)
        stem = re.sub(r"__seed\d+$", "", path.parent.name)  # <setting>__<method>
        method = next((m for slug, m in slugs.items() if stem.endswith(f"__{slug}")), stem)
        rows.append({
            "method": method,
            "cell": path.parent.name,
            "fit": path.stem,
            "metric": metric,
            "rows": len(curve),
            "gain": gain,
            "converged": bool(np.isfinite(gain) and gain < FLAT),
            "best_gain": best_gain,
            "best_flat": bool(np.isfinite(best_gain) and best_gain < FLAT),
        })  # fmt: skip
    return pd.DataFrame(rows)


def section(run_dir: str | os.PathLike, methods: Iterable[str] = ()) -> str:
    """A Markdown section per method (fits, converged share, worst last-quarter gain), or ""
    when the run saved no curves."""
    table = fits(run_dir, methods)
    if table.empty:
        return ""
    per_method = table.groupby("method", sort=False).agg(
        fits=("fit", "size"),
        converged=("converged", "sum"),
        worst_gain=("gain", "max"),
        best_flat=("best_flat", "sum"),
        worst_best_gain=("best_gain", "max"),
        rows=("rows", "median"),
    )
    shown = pd.DataFrame({
        "method": per_method.index,
        "fits": per_method["fits"].to_numpy(),
        "converged": [f"{c}/{n}" for c, n in zip(per_method["converged"], per_method["fits"])],
        "worst last-quarter gain": per_method["worst_gain"].to_numpy(),
        "best flat": [f"{c}/{n}" for c, n in zip(per_method["best_flat"], per_method["fits"])],
        "worst best gain": per_method["worst_best_gain"].to_numpy(),
        "median rows": per_method["rows"].to_numpy(),
    })  # fmt: skip
    return (
        "## Convergence\n\n"
        f"From the saved curves (`curves/<cell>/<fit>.csv`): a fit has converged when its "
        f"validation metric (train loss where it has none) improved by less than {FLAT:.0%} over "
        f"the last quarter of its logged rows (gain: from the quarter's first value to its lowest, "
        f"relative); `best flat` counts the fits whose best value improved by less than {FLAT:.0%} "
        "in the last quarter (best gain: best before the quarter minus best within it, relative; "
        "negative when the quarter stays above the earlier best), which a noisy plateau after an "
        f"early-stopped fit's best epoch passes; fits with fewer than {MIN_ROWS} rows count as "
        "neither.\n\n" + markdown_table(shown, floatfmt=".3g")
    )
