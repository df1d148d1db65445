"""Do two runs' results agree? Rows of ``results.csv`` matched on every key column.

A check that a change meant to leave some methods alone did leave them alone, e.g. STMP's
``favorita_unseen_types`` (the unseen-type input touches STMP, the LSTM and MAML only)::

    python -m experiments.compare_runs experiments/results/stmp/favorita_2026-11-28 \\
        experiments/results/stmp/favorita_unseen_types --methods HistAvg,ARIMA,XGBoost \\
        --groups one_week/regular,one_week/festival

Prints one line per method (rows compared, rows only in one run, largest absolute and
relative difference) and exits 1 when a compared value differs by more than ``--rtol`` or a
row of the selection is missing from either run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["experiment", "dataset", "method", "group", "seed", "metric"]


def load(run: Path, methods: list[str], groups: list[str] | None) -> pd.DataFrame:
    """The selected rows of ``run/results.csv``, indexed by ``KEYS`` (value column only)."""
    df = pd.read_csv(run / "results.csv")
    df = df[df["method"].isin(methods)]
    if groups is not None:
        df = df[df["group"].isin(groups)]
    return df.set_index(KEYS)["value"]


def compare(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Per method: rows in both, rows in one only, max |a - b| and max |a - b| / |a|."""
    both = pd.concat({"a": a, "b": b}, axis=1)
    rows = []
    for method, g in both.groupby(level="method"):
        common = g.dropna()
        diff = (common["a"] - common["b"]).abs()
        rel = diff / common["a"].abs().where(common["a"] != 0, 1.0)
        rows.append(
            (
                method,
                len(common),
                len(g) - len(common),
                float(diff.max()) if len(diff) else np.nan,
                float(rel.max()) if len(rel) else np.nan,
            )
        )
    columns = ["method", "compared", "only_in_one", "max_abs_diff", "max_rel_diff"]
    return pd.DataFrame(rows, columns=columns)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--groups", help="comma-separated groups (default: every group)")
    parser.add_argument("--rtol", type=float, default=0.0, help="allowed relative difference")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    groups = None if args.groups is None else args.groups.split(",")
    table = compare(load(args.run_a, methods, groups), load(args.run_b, methods, groups))
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
