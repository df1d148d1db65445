"""README summary tables drawn from several runs, regenerated like every report block.

A results README's "At a glance" table compares methods across runs (say, STMP from a
second tuning round against MAML from the first). Its spec is a JSON file beside the
README, named in a block whose path ends in ``.json``::

    <!-- report: glance.json -->
    (replaced by the table the spec describes)
    <!-- /report -->

The spec names its experiment and rows; ``dmeta.report.<experiment>.glance(spec, base)``
renders it (``base``: the spec's folder, against which run paths are resolved), or with
``"table": "claims"`` the experiment-neutral ``claims`` (a claim per row, a run per
column). A row's or column's ``runs`` are layered (``layered``): the first run's rows, then
each later run's rows in place of the methods it has.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.config import ConfigError
from dmeta.report import read_results
from dmeta.report.tables import markdown_table


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
      ConfigError: not a claims table and its experiment (``experiment``) has no ``glance``,
        the spec lacks a key its table needs, or its renderer finds it wrong.
    """
    spec = json.loads(spec_path.read_text())
    if spec.get("table") == "claims":
        render_spec = claims
    else:
        experiment = spec.get("experiment")
        module = importlib.import_module(f"dmeta.report.{experiment}") if experiment else None
        if module is None or not hasattr(module, "glance"):
            raise ConfigError(f"{spec_path}: experiment {experiment!r} has no glance renderer")
        render_spec = module.glance
    try:
        return render_spec(spec, spec_path.parent)
    except KeyError as err:
        raise ConfigError(
            f"{spec_path}: a table, column, row or claim lacks the key {err}"
        ) from None
    except ConfigError as err:
        raise ConfigError(f"{spec_path}: {err}") from None


ALPHA = 0.05
LISTED = 3  # methods ahead of the claimed best one named in its cell
TESTS = {"ttest": metrics.paired_ttest, "wilcoxon": metrics.wilcoxon}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a claims column is tested.

    Attributes:
      test: ``"ttest"`` (paired t) or ``"wilcoxon"`` (signed rank).
      center: ``"mean"`` or ``"median"`` of the units, shown and used for ranks.
      segments: a group prefix (e.g. ``"seg:"``; ``""`` every group): the units are those
        groups, each averaged over seeds, instead of seeds (a claim's ``group`` then does
        not apply).
      skip: groups that are not units (e.g. ``"average"``, a mean over the segments).
    """

    test: str = "ttest"
    center: str = "mean"
    segments: str | None = None
    skip: tuple[str, ...] = ()

    def units(self, scores: pd.DataFrame) -> pd.DataFrame:
        """One metric's rows as ``method, unit, value``."""
        if self.segments is None:
            return scores.assign(unit=scores.seed)[["method", "unit", "value"]]
        group = scores.group.astype(str)
        seg = scores[group.str.startswith(self.segments) & ~group.isin(self.skip)]
        seg = seg.groupby(["method", "group"], as_index=False)["value"].mean()
        return seg.rename(columns={"group": "unit"})

    def centers(self, units: pd.DataFrame) -> pd.Series:
        """Each method's mean or median over its units."""
        return units.groupby("method")["value"].agg(self.center)


def _fmt(value: float) -> str:
    """0.316 -> "0.316", 6208.4 -> "6,208"."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _paired(units: pd.DataFrame, a: str, b: str, protocol: Protocol) -> dict:
    """``a`` against ``b`` over the units both have: their centers, the test's p, the number
    of units, whether the test puts ``a`` above ``b`` (``a_above``) and in how many units
    ``a``'s value is the higher and the lower."""
    pairs = units.pivot_table(index="unit", columns="method", values="value")[[a, b]].dropna()
    x, y = pairs[a].to_numpy(), pairs[b].to_numpy()
    test = TESTS[protocol.test]
    _, p = test(x, y)
    # the test's own direction: for the signed-rank test the medians can point the other way
    a_above = test(x, y, alternative="greater")[1] < test(x, y, alternative="less")[1]
    center_a, center_b = pairs[a].agg(protocol.center), pairs[b].agg(protocol.center)
    higher, lower = int((x > y).sum()), int((x < y).sum())
    return dict(a=center_a, b=center_b, p=p, n=len(pairs), a_above=a_above, a_higher=higher,
                a_lower=lower)  # fmt: skip


def _best_cell(units: pd.DataFrame, claim: dict, protocol: Protocol) -> str:
    """``claim["ours"]`` has the best center (``higher`` is better, default True) among the
    methods present (only those of ``among`` if given, less ``exclude``): "holds" when
    first and ahead of the runner-up at p < ``ALPHA``, "first, ns" when not significantly;
    otherwise the first ``LISTED`` methods ahead of it with their p, "reversed" when one of
    all those ahead is significantly so."""
    ours, higher = claim["ours"], claim.get("higher", True)
    units = units[~units.method.isin(claim.get("exclude", []))]
    if "among" in claim:
        units = units[units.method.isin(claim["among"])]
    centers = protocol.centers(units).sort_values(ascending=not higher)
    if ours not in centers or len(centers) < 2:
        return "not run"
    rank = list(centers.index).index(ours)
    if rank == 0:
        runner = centers.index[1]
        p = _paired(units, ours, runner, protocol)["p"]
        verdict = "holds" if p < ALPHA else "first, ns"
        return (
            f"{verdict}: {ours} {_fmt(centers[ours])} vs {runner} {_fmt(centers[runner])} "
            f"(p {p:.2g})"
        )
    ahead = [(m, _paired(units, m, ours, protocol)["p"]) for m in centers.index[:rank]]
    verdict = "reversed" if any(p < ALPHA for _, p in ahead) else "behind, ns"
    listed = ", ".join(f"{m} {_fmt(centers[m])} (p {p:.2g})" for m, p in ahead[:LISTED])
    more = f" and {len(ahead) - LISTED} more" if len(ahead) > LISTED else ""
    head = f"{verdict}, {ours} #{rank + 1} of {len(centers)}: {_fmt(centers[ours])}"
    return f"{head} vs {listed}{more}"


def _beats_cell(units: pd.DataFrame, claim: dict, protocol: Protocol) -> str:
    """``claim["a"]`` beats ``claim["b"]`` (``higher`` better, default True): "holds" /
    "reversed" at p < ``ALPHA``, else "ns" (the claimed way) or "against", the way taken
    from the test; the two centers, p and the units where ``a`` is better."""
    a, b, higher = claim["a"], claim["b"], claim.get("higher", True)
    if not {a, b} <= set(units.method):
        return "not run"
    pair = _paired(units, a, b, protocol)
    better = pair["a_above"] == higher
    wins = pair["a_higher"] if higher else pair["a_lower"]
    if pair["p"] < ALPHA:
        verdict = "holds" if better else "reversed"
    else:
        verdict = "ns" if better else "against"
    return (
        f"{verdict}: {_fmt(pair['a'])} vs {_fmt(pair['b'])} (p {pair['p']:.2g}, {wins}/{pair['n']})"
    )


def _value_cell(units: pd.DataFrame, claim: dict) -> str:
    """``claim["method"]``'s mean ± std over units (a single value alone)."""
    values = units.value[units.method == claim["method"]]
    if values.empty:
        return "not run"
    if len(values) == 1:
        return _fmt(values.iloc[0])
    return f"{_fmt(values.mean())} ± {values.std():.2g}"


def _sweep_cell(scores: pd.DataFrame, claim: dict) -> str:
    """A sweep's points (the groups, in run order; mean over seeds, lower is better): with
    ``claim["paper"]`` whether that point is the best ("yes: it vs the others", "no: which
    is"), else whether the metric falls along the sweep ("yes", "partly": the last point is
    lower than the first, the fall not monotone, "no"). Untested: a sweep has few seeds."""
    means = scores.groupby("group", sort=False)["value"].mean()
    if "paper" not in claim:
        steps = np.diff(means.to_numpy())
        verdict = (
            "yes" if (steps < 0).all() else "partly" if means.iloc[-1] < means.iloc[0] else "no"
        )
        return f"{verdict}: {', '.join(_fmt(v) for v in means)}"
    best, paper = means.idxmin(), claim["paper"]
    if best == paper:
        others = ", ".join(_fmt(v) for g, v in means.items() if g != paper)
        return f"yes: {_fmt(means[paper])} vs {others}"
    return f"no: {best.split('=')[-1]} best, {_fmt(means[best])} vs {_fmt(means[paper])}"


CELLS = {"best": _best_cell, "beats": _beats_cell}


def claims(spec: dict, base: Path) -> str:
    """A glance table of the paper's claims (rows) tested in each column's runs.

    Spec keys: ``columns``, each with ``label``, ``runs`` (layered), optionally ``aliases``
    (method names mapped to the ones the claims use) and the ``Protocol`` fields ``test``,
    ``center``, ``segments``, ``skip``; ``aliases`` for every column; ``claims``, each with
    ``label``, ``kind`` (``best``: ``_best_cell``; ``beats``: ``_beats_cell``; ``value``:
    ``_value_cell``; ``sweep``: ``_sweep_cell`` over one method's groups), ``metric`` and
    optionally ``group`` and ``experiment`` (the rows' ``experiment``; a results file may
    hold several). A cell whose methods or metric a run lacks reads "not run" ("no sweeps"
    for a sweep).
    """
    columns = []
    for column in spec["columns"]:
        aliases = {**spec.get("aliases", {}), **column.get("aliases", {})}
        results = layered([base / run for run in column["runs"]])
        fields = {k: column[k] for k in ("test", "center", "segments") if k in column}
        protocol = Protocol(**fields, skip=tuple(column.get("skip", ())))
        columns.append((column["label"], results.replace({"method": aliases}), protocol))
    rows = []
    for claim in spec["claims"]:
        row = {"paper's claim": claim["label"]}
        for label, results, protocol in columns:
            scores = results[results.metric == claim["metric"]]
            if "experiment" in claim:
                scores = scores[scores.experiment == claim["experiment"]]
            if claim["kind"] == "sweep":
                row[label] = _sweep_cell(scores, claim) if len(scores) else "no sweeps"
                continue
            if "group" in claim and protocol.segments is None:
                scores = scores[scores.group.astype(str) == claim["group"]]
            units = protocol.units(scores)
            if units.empty:
                row[label] = "not run"
            elif claim["kind"] == "value":
                row[label] = _value_cell(units, claim)
            else:
                row[label] = CELLS[claim["kind"]](units, claim, protocol)
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))
