"""README summary tables drawn from several runs, regenerated like every report block.

A results README's "At a glance" table compares methods across runs (say, STMP from a
second tuning round against MAML from the first). Its spec is a JSON file beside the
README, named in a block whose path ends in ``.json``::

    <!-- report: glance.json -->
    (replaced by the table the spec describes)
    <!-- /report -->

The spec names its experiment and rows; ``dmeta.report.<experiment>.glance(spec, base)``
renders it (``base``: the spec's folder, against which run paths are resolved), or with
``"table": "claims"`` the experiment-neutral ``claims`` (a claim per row, a run per column). A row's
``runs`` are layered (``layered``): the first run's rows, then each later run's rows in place
of the methods it has.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmeta.report import read_results
from dmeta.report.tables import markdown_table, significance_table


def layered(runs: Sequence[Path]) -> pd.DataFrame:
    """The first run's rows with each later run's rows in place of the methods it has."""
    rows = read_results(runs[0])
    for run in runs[1:]:
        over = read_results(run)
        rows = pd.concat([rows[~rows["method"].isin(set(over["method"]))], over])
    return rows.reset_index(drop=True)


def render(spec_path: Path) -> str:
    """The markdown of the glance spec at ``spec_path`` (a ``.json`` file).

    Raises:
      ValueError: not a claims table and its experiment (``experiment``) has no ``glance``.
    """
    spec = json.loads(spec_path.read_text())
    if spec.get("table") == "claims":
        return claims(spec, spec_path.parent)
    experiment = spec.get("experiment")
    module = importlib.import_module(f"dmeta.report.{experiment}") if experiment else None
    if module is None or not hasattr(module, "glance"):
        raise ValueError(f"{spec_path}: experiment {experiment!r} has no glance renderer")
    return module.glance(spec, spec_path.parent)


ALPHA = 0.05


def _fmt(value: float) -> str:
    """0.316 -> "0.316", 6208.4 -> "6,208"."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _paired(scores: pd.DataFrame, a: str, b: str, metric: str, pair_on: str) -> pd.Series:
    """``significance_table`` of ``a`` against ``b`` over all of ``scores`` (one cell), plus
    ``a_higher``: in how many units ``a``'s value is the higher."""
    top = significance_table(scores, a, b, metric, by=(), pair_on=pair_on).iloc[0].copy()
    pairs = scores.pivot_table(index=pair_on, columns="method", values="value").dropna()
    top["a_higher"] = int((pairs[a] > pairs[b]).sum())
    return top


def _best_cell(scores: pd.DataFrame, claim: dict, pair_on: str) -> str:
    """``claim["ours"]`` has the best mean ``metric`` (``higher`` is better, default True)
    among the methods present (only those of ``among`` if given, less ``exclude``):
    "holds" when first and ahead of the
    runner-up at p < ``ALPHA``, "first, ns" when not significantly; otherwise every method
    ahead of it with its p, "reversed" when one of them is significantly ahead."""
    ours, metric, higher = claim["ours"], claim["metric"], claim.get("higher", True)
    scores = scores[~scores.method.isin(claim.get("exclude", []))]
    if "among" in claim:
        scores = scores[scores.method.isin(claim["among"])]
    means = scores.groupby("method")["value"].mean().sort_values(ascending=not higher)
    if ours not in means or len(means) < 2:
        return "not run"
    rank = list(means.index).index(ours)
    if rank == 0:
        runner = means.index[1]
        p = _paired(scores, ours, runner, metric, pair_on).p_value
        verdict = "holds" if p < ALPHA else "first, ns"
        return (
            f"{verdict}: {ours} {_fmt(means[ours])} vs {runner} {_fmt(means[runner])} (p {p:.2g})"
        )
    ahead = []
    for method in means.index[:rank]:
        ahead.append((method, _paired(scores, method, ours, metric, pair_on).p_value))
    verdict = "reversed" if any(p < ALPHA for _, p in ahead) else "behind, ns"
    listed = ", ".join(f"{m} {_fmt(means[m])} (p {p:.2g})" for m, p in ahead)
    return f"{verdict}, {ours} #{rank + 1} of {len(means)}: {_fmt(means[ours])} vs {listed}"


def _beats_cell(scores: pd.DataFrame, claim: dict, pair_on: str) -> str:
    """``claim["a"]`` beats ``claim["b"]`` on ``metric`` (``higher`` better, default True):
    "holds" / "reversed" at p < ``ALPHA``, else "ns" (the claimed way) or "against"; the
    means, p and the units where ``a`` is better."""
    a, b, metric, higher = claim["a"], claim["b"], claim["metric"], claim.get("higher", True)
    if not {a, b} <= set(scores.method):
        return "not run"
    top = _paired(scores, a, b, metric, pair_on)
    better = top["diff"] > 0 if higher else top["diff"] < 0
    wins = int(top.a_higher if higher else top.n - top.a_higher)
    if top.p_value < ALPHA:
        verdict = "holds" if better else "reversed"
    else:
        verdict = "ns" if better else "against"
    return (
        f"{verdict}: {_fmt(top.mean_a)} vs {_fmt(top.mean_b)} (p {top.p_value:.2g}, "
        f"{wins}/{int(top.n)})"
    )


def _value_cell(scores: pd.DataFrame, claim: dict) -> str:
    """``claim["method"]``'s mean ± std of ``metric`` over units (a single value alone)."""
    values = scores.value[scores.method == claim["method"]]
    if values.empty:
        return "not run"
    if len(values) == 1:
        return _fmt(values.iloc[0])
    return f"{_fmt(values.mean())} ± {values.std():.2g}"


def claims(spec: dict, base: Path) -> str:
    """A glance table of the paper's claims (rows) tested in each column's runs.

    Spec keys: ``columns`` (each ``label`` and ``runs``, layered), ``pair_on`` (the unit of
    the paired tests; default ``seed``), ``aliases`` (an older run's method names mapped to
    the current ones) and ``claims``, each with ``label``, ``kind``
    (``best``: ``_best_cell``; ``beats``: ``_beats_cell``; ``value``: ``_value_cell``),
    ``metric`` and optionally ``group``. A cell whose methods or metric a run lacks reads
    "not run".
    """
    pair_on = spec.get("pair_on", "seed")
    aliases = spec.get("aliases", {})
    columns = [
        (c["label"], layered([base / run for run in c["runs"]]).replace({"method": aliases}))
        for c in spec["columns"]
    ]
    rows = []
    for claim in spec["claims"]:
        row = {"paper's claim": claim["label"]}
        for label, results in columns:
            scores = results[results.metric == claim["metric"]]
            if "group" in claim:
                scores = scores[scores.group.astype(str) == claim["group"]]
            if scores.empty:
                row[label] = "not run"
            elif claim["kind"] == "best":
                row[label] = _best_cell(scores, claim, pair_on)
            elif claim["kind"] == "beats":
                row[label] = _beats_cell(scores, claim, pair_on)
            else:
                row[label] = _value_cell(scores, claim)
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))
