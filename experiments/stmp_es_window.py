"""The early-stopping window's MSE of every neural fit of STMP run or design folders.

Every neural method of the STMP experiments early-stops on the MSE of the ``protocol.val_days``
days before its cutoff (nearly all regular days); its best score is in each fit's curve
(``curves/<cell>/<fit>.csv``, column ``val_mse``). This reads the cells that hold exactly one
fit (a tuning cell holds one per grid point and is left out), so each score belongs to the
state the method kept, and prints per folder and method the mean over seeds and the ratio to
STMP's, paired over the seeds both have.

    python -m experiments.stmp_es_window experiments/results/stmp/favorita_steps10k \\
        experiments/results/stmp/design_regions
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dmeta.report.tables import markdown_table


def best_scores(folder: Path) -> pd.DataFrame:
    """One row per single-fit cell of ``folder/curves``: ``group`` (the setting or design
    variant), ``method``, ``seed`` and ``es_mse``, the curve's lowest ``val_mse``."""
    rows = []
    for cell in sorted((folder / "curves").iterdir()):
        fits = sorted(cell.glob("*.csv"))
        group, method, seed = cell.name.rsplit("__", 2)
        if len(fits) == 1 and seed.startswith("seed"):
            es = pd.read_csv(fits[0])["val_mse"].min()
            rows.append(dict(group=group, method=method, seed=int(seed[4:]), es_mse=es))
    return pd.DataFrame(rows, columns=["group", "method", "seed", "es_mse"])


def table(folder: Path) -> pd.DataFrame:
    """Per (group, method): seeds, mean best early-stopping MSE, and its ratio to STMP's
    over the seeds both have (> 1: worse than STMP)."""
    scores = best_scores(folder)
    out = []
    for (group, method), part in scores.groupby(["group", "method"], sort=False):
        stmp = scores[(scores.group == group) & (scores.method == "STMP")].set_index("seed")
        paired = part.set_index("seed").es_mse.align(stmp.es_mse, join="inner")
        ratio = paired[0].mean() / paired[1].mean() if len(paired[0]) else float("nan")
        out.append(dict(group=group, method=method, seeds=",".join(map(str, part.seed)),
                        es_mse=part.es_mse.mean(), ratio_to_stmp=ratio))  # fmt: skip
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> None:
    """CLI: one or more STMP run or design folders; prints a Markdown table per folder."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    for folder in ap.parse_args(argv).folders:
        print(f"### {folder}\n\n{markdown_table(table(folder), floatfmt='.4g')}\n")


if __name__ == "__main__":
    main()
