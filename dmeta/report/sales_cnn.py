"""Sales CNN run report: summaries per experiment, the Table 1 layout (methods x regions),
the tuned hyperparameters and the sweep plots (Figures 5-7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.report.tables import markdown_table, summary_markdown
from dmeta.sales_cnn.pipeline import METHODS
from dmeta.sales_cnn.protocol import NAME, SWEEPS
from dmeta.train.results import summarize


def _mean_std(s: pd.Series) -> str:
    return f"{s['mean']:.4g} ± {s['std']:.2g}" if np.isfinite(s["std"]) else f"{s['mean']:.4g}"


def table1_markdown(df: pd.DataFrame) -> str:
    """Methods x regions (mean ± std over seeds), the paper's Table 1 layout, and the
    chosen hyperparameters (``hp:`` rows, mean over seeds) when the run has them."""
    part = df[(df["experiment"] == NAME) & (df["metric"] == "mse")]
    stats = part.groupby(["method", "group"], sort=False)["value"].agg(["mean", "std"])
    table = stats.apply(_mean_std, axis=1).unstack("group")
    groups = [g for g in dict.fromkeys(part["group"]) if g != "average"] + ["average"]
    table = table[groups].reindex([m for m in METHODS if m in table.index])
    n = part["seed"].nunique()
    text = f"### Table 1 analog: test MSE (mean ± std over {n} seeds)\n\n" + markdown_table(
        table.reset_index()
    )
    hp = df[(df["experiment"] == NAME) & df["metric"].str.startswith("hp:")]
    if not hp.empty:
        chosen = hp.groupby(["method", "metric"], sort=False)["value"].agg(["mean", "std"])
        chosen = chosen.apply(_mean_std, axis=1).unstack("metric").fillna("")
        text += (
            "\n### Chosen hyperparameters (validation MSE; mean ± std over seeds)\n\n"
            + markdown_table(chosen.reset_index())
        )
    return text


def sweep_images(results: pd.DataFrame, prefix: str = "") -> str:
    """Markdown image links of the sweep plots that ``plots`` writes for ``results``."""
    names = [
        f"sweep_{name}.png"
        for name in SWEEPS
        if (results["experiment"] == f"{NAME}_sweep_{name}").any()
    ]
    return "\n".join(f"![{n}]({prefix}{n})" for n in names)


def render(run_dir: Path, results: pd.DataFrame) -> str:
    """``results.md``: one summary per experiment (Table 1, each sweep), the Table 1
    layout and the sweep plots."""
    datasets = ", ".join(dict.fromkeys(results["dataset"].astype(str)))
    parts = [f"# Sales CNN on {datasets}\n"]
    scores = results[~results["metric"].str.startswith("hp:")]
    for experiment, part in summarize(scores).groupby("experiment", sort=False):
        parts.append(f"## {experiment}\n\n{summary_markdown(part)}")
    parts += [table1_markdown(results), sweep_images(results)]
    return "\n".join(p.rstrip() + "\n" for p in parts if p.strip())


def plots(run_dir: Path, results: pd.DataFrame) -> None:
    """One PNG per sweep (mean ± std over seeds): ``sweep_<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, (_, label) in SWEEPS.items():
        part = results[results["experiment"] == f"{NAME}_sweep_{name}"]
        if part.empty:
            continue
        x = part["group"].str.split("=").str[1].astype(float)
        stats = part.assign(x=x).groupby("x")["value"].agg(["mean", "std"]).fillna(0.0)
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3)
        ax.set_xlabel(label)
        ax.set_ylabel("MSE per period" if name == "horizon" else "MSE (average of regions)")
        ax.set_title(f"CNN+WD+TL vs {name}")
        fig.tight_layout()
        fig.savefig(Path(run_dir) / f"sweep_{name}.png", dpi=110)
        plt.close(fig)
