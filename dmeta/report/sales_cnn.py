"""Sales CNN run report: summaries per experiment, the Table 1 layout (methods x regions),
the tuned hyperparameters, paired tests of the paper's orderings and the sweep plots
(Figures 5-7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.report.glance import ALPHA
from dmeta.report.tables import markdown_table, significance_table, summary_markdown
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


# the paper's Table 1 orderings, (better, worse): section 5.3
CLAIMS = (
    ("FE+GBRT", "ARIMA"),
    ("CNN", "DNN"),
    ("CNN+WD", "CNN"),
    ("CNN+WD+TL", "CNN+WD"),
    ("CNN+WD+TL", "Single-CNN"),
)


def _verdict(diff: float, p: float) -> str:
    if not np.isfinite(p) or p >= ALPHA:
        return "not significant"
    return "holds" if diff < 0 else "reversed"


def claim_tests(df: pd.DataFrame) -> list[dict]:
    """The paper's orderings (``CLAIMS``) tested on the test MSE of each region averaged over
    seeds, paired over regions: the regions are the independent test sets, while the seeds
    only vary training, so (region, seed) pairs are not independent units.

    Returns:
      One dict per ordering both of whose methods ran: ``better``, ``worse``, their mean
      MSE ``mean_better`` / ``mean_worse``, ``diff`` (better minus worse), ``p_ttest``,
      ``p_wilcoxon``, ``wins`` (regions where the better one is lower) and ``n`` regions.
    """
    part = df[(df["experiment"] == NAME) & (df["metric"] == "mse") & (df["group"] != "average")]
    keys = ["experiment", "dataset", "method", "group", "metric"]
    part = part.groupby(keys, as_index=False, sort=False)["value"].mean()
    tests = []
    for better, worse in CLAIMS:
        if not {better, worse} <= set(part["method"]):
            continue
        t, w = (
            significance_table(part, better, worse, "mse", by=(), test=test, pair_on="group")
            for test in ("ttest", "wilcoxon")
        )
        t, w = t.iloc[0], w.iloc[0]
        mse = part[part["method"].isin([better, worse])].pivot(
            index="group", columns="method", values="value"
        )
        tests.append(dict(
            better=better, worse=worse, mean_better=t["mean_a"], mean_worse=t["mean_b"],
            diff=t["diff"], p_ttest=t["p_value"], p_wilcoxon=w["p_value"],
            wins=int((mse[better] < mse[worse]).sum()), n=int(t["n"]),
        ))  # fmt: skip
    return tests


def claims_markdown(df: pd.DataFrame) -> str:
    """``claim_tests`` as a table: mean MSE of each, paired t-test and Wilcoxon p-values,
    regions where the better one has the lower MSE, and whether the ordering holds (lower
    MSE, t-test p < 0.05), is reversed or is not significant (with 5 regions the smallest
    two-sided Wilcoxon p is 0.0625)."""
    rows = [
        {
            "paper: better < worse": f"{t['better']} < {t['worse']}",
            "mse better": f"{t['mean_better']:.4g}",
            "mse worse": f"{t['mean_worse']:.4g}",
            "p (t-test)": f"{t['p_ttest']:.3g}",
            "p (Wilcoxon)": f"{t['p_wilcoxon']:.3g}",
            "regions better": f"{t['wins']}/{t['n']}",
            "verdict": _verdict(t["diff"], t["p_ttest"]),
        }
        for t in claim_tests(df)
    ]
    if not rows:
        return ""
    return (
        "### The paper's orderings: test MSE averaged over seeds, paired over regions\n\n"
        + markdown_table(pd.DataFrame(rows))
    )


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
    parts += [table1_markdown(results), claims_markdown(results), sweep_images(results)]
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
