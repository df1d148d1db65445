"""C2M run report: Tables 1-3 analogs, paired t-tests of Ours against every baseline and a
random segmentation, the tuned hyperparameters, the case study (``case_study.csv``) and Figures 2-3 (sweeps)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dmeta.c2m.protocol import BASELINES, RANDOM
from dmeta.report.tables import markdown_table, significance_table, summary_markdown
from dmeta.train.results import summarize

TABLES = (
    ("table1", "Table 1 analog"),
    ("table2", "Table 2 analog (source behaviours, Ours)"),
    ("table3", "Table 3 analog (ablations)"),
)


def _is_hp(metric: pd.Series) -> pd.Series:
    return metric.str.startswith("hp:")


def tables_markdown(df: pd.DataFrame) -> str:
    """Tables 1-3 analogs (mean ± std over seeds), significance vs the best baseline and the
    chosen hyperparameters (``hp:`` rows)."""
    parts = []
    scores = df[~_is_hp(df["metric"])]
    for group, title in TABLES:
        part = scores[scores["group"] == group]
        if part.empty:
            continue
        stats = part.groupby(["method", "metric"])["value"].agg(["mean", "std"]).reset_index()
        stats["cell"] = [
            f"{m:.4g} ± {s:.2g}" for m, s in zip(stats["mean"], stats["std"].fillna(0))
        ]
        table = stats.pivot(index="method", columns="metric", values="cell").reset_index()
        n = part["seed"].nunique()
        parts.append(f"### {title} ({n} seeds)\n\n{markdown_table(table)}")
    parts.append(pairwise_markdown(scores[scores["group"] == "table1"]))
    hp = df[_is_hp(df["metric"])]
    if not hp.empty:
        table = hp.pivot_table(index=["method", "seed"], columns="metric", values="value")
        text = table.map(lambda v: "" if pd.isna(v) else f"{v:.4g}").reset_index()
        parts.append(
            "### Chosen hyperparameters (per seed, by the validation users' SC)\n\n"
            + markdown_table(text)
        )
    return "\n\n".join(part for part in parts if part)


PAIRWISE = ("SC", "SC_inliers", "CH", "CH_inliers", "SC_shared", "MPP", "MPP_popular", "ARI")


def pairwise_markdown(t1: pd.DataFrame) -> str:
    """Ours against every baseline and the random segmentation on each ``PAIRWISE`` metric
    of ``t1`` (Table 1 rows): difference of the seed means (Ours minus the method), paired t
    over seeds and in how many seeds Ours scores higher ("" with fewer than 2 seeds)."""
    cells: dict[str, dict[str, str]] = {}
    for metric in (m for m in PAIRWISE if m in set(t1["metric"])):
        part = t1[t1["metric"] == metric]
        for method in (m for m in (*BASELINES, RANDOM) if m in set(part["method"])):
            pairs = part.pivot(index="seed", columns="method", values="value")[["Ours", method]]
            pairs = pairs.dropna()
            if len(pairs) < 2:
                continue
            sig = significance_table(part, "Ours", method, metric, by=()).iloc[0]
            higher = int((pairs["Ours"] > pairs[method]).sum())
            cells.setdefault(method, {})[metric] = (
                f"{sig['diff']:+.3g} (p {sig['p_value']:.2g}, {higher}/{len(pairs)})"
            )
    if not cells:
        return ""
    table = pd.DataFrame.from_dict(cells, orient="index").fillna("")
    table = table[[m for m in PAIRWISE if m in table]].rename_axis("method").reset_index()
    return (
        "### Ours against every method (Ours minus the method, mean over seeds; paired t over "
        f"seeds; seeds where Ours is higher)\n\n{markdown_table(table)}"
    )


def case_study_markdown(run_dir: Path) -> str:
    """The case study of Ours' first seed from ``case_study.csv`` ("" when absent)."""
    path = Path(run_dir) / "case_study.csv"
    if not path.exists():
        return ""
    frame = pd.read_csv(path, keep_default_na=False)
    lines = ["### Case study (Ours, first seed)", ""]
    for row in frame.itertuples(index=False):
        lines.append(
            f"- segment {row.segment}: {row.share:.1%} of users; {row.unique_patterns} unique "
            f"patterns, top: {row.top}; attribute set: {row.attribute_set}"
        )
    return "\n".join(lines) + "\n"


def sweep_images(results: pd.DataFrame, prefix: str = "") -> str:
    """Markdown image links of the sweep plots that ``plots`` writes for ``results``."""
    names = [
        f"sweep_{which}.png"
        for which in ("alpha", "beta")
        if (results["group"] == f"sweep_{which}").any()
    ]
    return "\n".join(f"![{n}]({prefix}{n})" for n in names)


def render(run_dir: Path, results: pd.DataFrame) -> str:
    """``results.md``: summary per (group, method), the tables, case study and sweep plots."""
    datasets = ", ".join(dict.fromkeys(results["dataset"].astype(str)))
    summary = summary_markdown(summarize(results[~_is_hp(results["metric"])]))
    parts = [f"# C2M on {datasets}\n", f"## c2m\n\n{summary}", tables_markdown(results)]
    parts += [case_study_markdown(run_dir), sweep_images(results)]
    return "\n\n".join(p.strip() for p in parts if p.strip()) + "\n"


def plots(run_dir: Path, results: pd.DataFrame) -> None:
    """Figures 2-3 analog: SC, CH, MPP against alpha and beta (``sweep_<which>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for which in ("alpha", "beta"):
        part = results[results["group"] == f"sweep_{which}"]
        if part.empty:
            continue
        part = part.assign(v=part["method"].str.split("=").str[1].astype(float))
        fig, axes = plt.subplots(1, 3, figsize=(10, 3))
        for ax, metric in zip(axes, ("SC", "CH", "MPP")):
            m = part[part["metric"] == metric].groupby("v")["value"].agg(["mean", "std"])
            ax.errorbar(m.index, m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3)
            ax.set_xlabel(which)
            ax.set_title(metric)
        fig.tight_layout()
        fig.savefig(Path(run_dir) / f"sweep_{which}.png", dpi=100)
        plt.close(fig)
