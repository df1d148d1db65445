"""Do two runs' results agree? Results rows matched on every key column.

A check that a change meant to leave some methods alone did leave them alone, e.g. STMP's
``favorita_unseen_types`` (the unseen-type input touches STMP, the LSTM and MAML only)::

    python -m experiments.compare_runs experiments/results/stmp/favorita_2026-11-28 \\
        experiments/results/stmp/favorita_unseen_types --methods HistAvg,ARIMA,XGBoost \\
        --groups one_week/regular,one_week/festival

Prints one line per method (rows compared, rows only in one run, largest absolute and
relative difference) and exits 1 when a compared value differs by more than ``--rtol`` or a
row of the selection is missing from either run.

With ``--paired`` it asks instead whether a rerun changed a method: each group's value
(e.g. a Sales CNN region's test MSE) is averaged over seeds in either run, and the two runs
are paired over the groups (t-test and Wilcoxon), as the Sales CNN report tests the paper's
orderings; e.g. ``frat_per_region`` against ``frat_long``::

    python -m experiments.compare_runs experiments/results/sales_cnn/frat_long \\
        experiments/results/sales_cnn/frat_per_region --methods CNN+WD+TL,CNN+WD \\
        --groups 2277,25027,24991,2281,9825 --metrics mse --paired
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.report import read_results
from dmeta.report.tables import significance_table

KEYS = ["experiment", "dataset", "method", "group", "seed", "metric"]


def load(
    run: Path, methods: list[str], groups: list[str] | None, metrics: list[str] | None = None
) -> pd.DataFrame:
    """The selected rows of ``run``'s results (``dmeta.report.read_results``: results.csv,
    else its cells), indexed by ``KEYS`` (value column only)."""
    df = read_results(run)
    df = df[df["method"].isin(methods)]
    if groups is not None:
        df = df[df["group"].isin(groups)]
    if metrics is not None:
        df = df[df["metric"].isin(metrics)]
    return df.set_index(KEYS)["value"]


def compare(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Per method: rows in both, rows in one only, max |a - b| and max |a - b| / |a| (a value
    missing (NaN) in one run only counts as an infinite difference; in both, as none)."""
    both = pd.concat({"a": a, "b": b}, axis=1, join="inner")
    only = a.index.symmetric_difference(b.index).get_level_values("method")
    rows = []
    for method in sorted(
        set(a.index.get_level_values("method")) | set(b.index.get_level_values("method"))
    ):
        g = both[both.index.get_level_values("method") == method]
        one_nan = g["a"].isna() != g["b"].isna()
        diff = (g["a"] - g["b"]).abs().fillna(0.0).where(~one_nan, np.inf)
        rel = diff / g["a"].abs().where(g["a"].abs() > 0, 1.0).fillna(1.0)
        rows.append(
            (
                method,
                len(g),
                int((only == method).sum()),
                float(diff.max()) if len(g) else np.nan,
                float(rel.max()) if len(g) else np.nan,
            )
        )
    columns = ["method", "compared", "only_in_one", "max_abs_diff", "max_rel_diff"]
    return pd.DataFrame(rows, columns=columns)


def paired(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Per (method, metric): each group's value averaged over seeds in either run, then the
    runs paired over the groups: mean of each run, t-test and Wilcoxon p-values, and the
    groups where run b is lower. Pairs present in one run only are left out (printed)."""
    keys = ["experiment", "dataset", "method", "group", "metric"]
    runs = {name: s.groupby(keys).mean() for name, s in (("a", a), ("b", b))}
    pairs = [
        set(zip(*(s.index.get_level_values(k) for k in ("method", "metric"))))
        for s in runs.values()
    ]
    for method, metric in sorted(pairs[0] ^ pairs[1]):
        print(f"{method} {metric}: in one run only, not tested")
    rows = []
    for method, metric in sorted(pairs[0] & pairs[1]):
        wide = pd.concat(
            {r: s.xs((method, metric), level=("method", "metric")) for r, s in runs.items()},
            axis=1,
        ).dropna()
        long = wide.reset_index().melt(
            id_vars=["experiment", "dataset", "group"], var_name="method", value_name="value"
        )
        long["metric"] = metric
        tests = {
            t: significance_table(long, "a", "b", metric, by=(), test=t, pair_on="group").iloc[0]
            for t in ("ttest", "wilcoxon")
        }
        rows.append({
            "method": method, "metric": metric, "mean_a": tests["ttest"]["mean_a"],
            "mean_b": tests["ttest"]["mean_b"], "p_ttest": tests["ttest"]["p_value"],
            "p_wilcoxon": tests["wilcoxon"]["p_value"],
            "b_lower": f"{int((wide['b'] < wide['a']).sum())}/{len(wide)}",
        })  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--groups", help="comma-separated groups (default: every group)")
    parser.add_argument("--metrics", help="comma-separated metrics (default: every metric)")
    parser.add_argument("--rtol", type=float, default=0.0, help="allowed relative difference")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="test each method's change between the runs, seed means paired over groups",
    )
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    groups, metrics = (None if a is None else a.split(",") for a in (args.groups, args.metrics))
    if args.paired:
        table = paired(*(load(run, methods, groups, metrics) for run in (args.run_a, args.run_b)))
        print(table.to_string(index=False, float_format="{:.4g}".format))
        return 0
    table = compare(*(load(run, methods, groups, metrics) for run in (args.run_a, args.run_b)))
    missing = sorted(set(methods) - set(table["method"]))
    print(table.to_string(index=False))
    for m in missing:
        print(f"{m}: no rows in either run")
    bad = (table["only_in_one"] > 0) | ~(table["max_rel_diff"] <= args.rtol)
    failed = bool(missing) or bool(bad.any())
    print("DIFFER" if failed else "agree")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
