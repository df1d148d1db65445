"""CDLtvS reports: Table 1 analog, paired tests, chosen hyperparameters, Figures 4-7.

Everything comes from the run folder: ``results.csv`` (groups ``P=<x>%/{all,C_na,C_a}``;
Table 1 methods, the ablations and the ``k=<k>`` sweep, told apart by
:func:`dmeta.ltv.protocol.table_of`) and Figure 7's
``scatter_P=<x>_seed0.npz`` (test LTV ``y``; ``ltvs`` / ``cd`` predictions and their
``*_expert`` of one CDLtvS model's stage 1 (its target LtvS) and stage 2).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dmeta.ltv.protocol import BASELINES, METRICS, SINGLE_DOMAIN_DATA, table_of  # noqa: E402
from dmeta.report.tables import markdown_table, significance_table, summary_markdown  # noqa: E402
from dmeta.train.results import summarize  # noqa: E402

FIG4_METHODS = ("CDLtvS", "PTUPCDR", "DASL-style", "LtvS")
RENAMED = {"DASL": "DASL-style"}  # method names of runs written before the rename
USAGE_NOTE = (
    "`t<j>` / `s<j>`: target / source-domain expert j (LtvS has the target one only); "
    "`entropy`: entropy of the shares over log k (1 uniform, 0 every sample on one expert). "
    "Top-1 routing gives each sample h/k of the h units, so a collapsed router (entropy "
    "near 0) leaves the model h/k units for everyone.\n"
)
SINGLE_DOMAIN_NOTE = (
    "**Single-domain data ({name}).** There is no source domain, so CDLtvS (stage 2) and the "
    "cross-domain baselines PTUPCDR and DASL-style are not applicable; neither are the sparsity "
    "levels P > 0 (removing the only history leaves nothing to transfer from), the ablations "
    "and the k sweep (they vary stage 2). LtvS is stage 1 (eq. 12) on the purchases; BG/NBD + "
    "Gamma-Gamma is the classical reference. Split: the windows `data.{name}` of config.json "
    "(by default 7-day windows from the first purchase date, 39 history windows, label = spend "
    "in the next 39 windows, one anchor per customer: on the CDNOW master file the classic "
    "39-week calibration 1997-01-01..1997-09-30 and 39-week holdout to 1998-06-30), customers "
    "split 7:2:1.\n"
)


def _p_value(label: str) -> int:
    return int(label.removeprefix("P=").removesuffix("%"))


def table(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of ``"table1"``, ``"experts"`` or ``"ablation"`` (with Table 1's CDLtvS as
    the reference)."""
    tables = df["method"].map(table_of)
    keep = tables == name
    if name == "ablation":
        keep |= df["method"] == "CDLtvS"
    return df[keep]


def table1_markdown(df: pd.DataFrame, group: str = "all") -> str:
    """Table 1 analog: rows methods, columns P x (NMAE, NRMSE, Gini), mean over seeds."""
    part = table(df, "table1")
    part = part[part["group"].str.endswith(f"/{group}")]
    part = part[part["metric"].isin(METRICS)]
    part = part.assign(P=part["group"].str.split("/").str[0])
    wide = part.pivot_table(index="method", columns=["P", "metric"], values="value", aggfunc="mean")
    wide = wide.loc[[m for m in (*BASELINES, "LtvS", "CDLtvS") if m in wide.index]]
    ps = sorted(wide.columns.get_level_values(0).unique(), key=_p_value)
    wide = wide[[(pl, m) for pl in ps for m in METRICS if (pl, m) in wide.columns]]
    wide.columns = [f"{pl} {m}" for pl, m in wide.columns]
    return markdown_table(wide.reset_index(), floatfmt=".4f")


def significance_markdown(df: pd.DataFrame) -> list[str]:
    """Paired t-tests over seeds on NMAE: CDLtvS vs LtvS, DASL-style and PTUPCDR (single-domain
    data: LtvS vs each baseline); none with fewer than 2 seeds."""
    t1 = table(df, "table1")
    methods = list(dict.fromkeys(t1["method"]))
    single = str(df["dataset"].iloc[0]) in SINGLE_DOMAIN_DATA
    ref, others = ("LtvS", methods) if single else ("CDLtvS", ("LtvS", "DASL-style", "PTUPCDR"))
    if df["seed"].nunique() < 2 or ref not in methods:
        return []
    parts = []
    for other in others:
        if other in methods and other != ref:
            sig = significance_table(t1, ref, other, "nmae")
            parts += [
                f"\n### {ref} vs {other}, NMAE (paired t over seeds)\n",
                markdown_table(sig, floatfmt=".4g"),
            ]
    return parts


def render(run_dir: Path, results: pd.DataFrame) -> str:
    """The ``results.md`` of a CDLtvS run."""
    results = results.replace({"method": RENAMED})
    name = str(results["dataset"].iloc[0])
    hp = results["metric"].str.startswith("hp:")
    parts = [f"# CDLtvS on {name}\n"]
    if name in SINGLE_DOMAIN_DATA:
        parts.append(SINGLE_DOMAIN_NOTE.format(name=name))
    parts += [
        f"## Table 1 analog ({name}, mean over {results['seed'].nunique()} seeds, all customers)\n",
        table1_markdown(results),
        *significance_markdown(results),
    ]
    if hp.any():
        parts += [
            "\n## Chosen hyperparameters (validation NMAE, `tuning.trials` grid points)\n",
            summary_markdown(summarize(results[hp])),
        ]
    usage = results["metric"].str.startswith("expert_")
    if usage.any():
        parts += [
            "\n## Expert usage (share of the test samples per expert, mean over seeds)\n",
            USAGE_NOTE,
            usage_markdown(results[usage]),
        ]
    figs = figures(run_dir, results)
    parts += ["\n" + "\n\n".join(f"![{f}]({f})" for f in figs) + "\n"] if figs else []
    for name in ("table1", "ablation", "experts"):
        part = table(results[~hp & ~usage], name)
        if len(part) and (name == "table1" or set(part["method"]) != {"CDLtvS"}):
            summary = summary_markdown(summarize(part))
            parts.append(f"## {name} (mean ± std over seeds)\n\n{summary}")
    return "\n".join(parts)


def usage_markdown(usage: pd.DataFrame) -> str:
    """Rows (method, P), columns the target experts ``t<j>``, ``entropy_t``, then the source
    ones (CDLtvS family), from the ``expert_*`` rows of :func:`dmeta.ltv.protocol.usage_rows`."""
    usage = usage.assign(
        P=usage["group"].str.split("/").str[0],
        column=usage["metric"].str.removeprefix("expert_").str.removeprefix("share_"),
    )
    wide = usage.pivot_table(index=["method", "P"], columns="column", values="value")
    methods = list(dict.fromkeys(usage["method"]))
    wide = wide.loc[sorted(wide.index, key=lambda mp: (methods.index(mp[0]), _p_value(mp[1])))]

    def column_order(c: str) -> tuple:
        return (c.endswith("_s") or c.startswith("s"), c.startswith("entropy"), len(c), c)

    wide = wide[sorted(wide.columns, key=column_order)]
    cells = wide.map(lambda v: "" if np.isnan(v) else f"{v:.3f}")  # no such expert: blank
    return markdown_table(cells.reset_index())


def demo_markdown(results: pd.DataFrame) -> str:
    """Every metric of each method per customer group (one seed), as in ``dmeta demo``."""
    table = results[results["metric"].isin(METRICS)].pivot_table(
        index="method", columns=["group", "metric"], values="value"
    )
    table.columns = [f"{g} {m}" for g, m in table.columns]
    return markdown_table(table.reset_index(), floatfmt=".3f")


def scatter_file(run_dir: Path) -> Path | None:
    """Figure 7's predictions: the ``scatter_P=<x>_seed0.npz`` with the lowest P, if any."""
    files = sorted(Path(run_dir).glob("scatter_P=*_seed0.npz"), key=lambda f: int(f.stem[10:-6]))
    return files[0] if files else None


def figures(run_dir: Path, results: pd.DataFrame) -> list[str]:
    """The figure files the run's data gives (sparse customers and a cross-domain method:
    Figure 4; ablations: 5; k sweep: 6; a scatter file: 7)."""
    tables = set(results["method"].map(table_of))
    t1 = table(results, "table1")
    names = []
    if t1["group"].str.endswith("/C_na").any() and t1["method"].isin(FIG4_METHODS).any():
        names.append("fig4_sparse_vs_nonsparse.png")
    names += ["fig5_ablation.png"] if "ablation" in tables else []
    names += ["fig6_experts.png"] if "experts" in tables else []
    names += ["fig7_scatter_experts.png"] if scatter_file(run_dir) is not None else []
    return names


def plots(run_dir: Path, results: pd.DataFrame) -> None:
    """Writes the PNGs of :func:`figures` into ``run_dir``."""
    results = results.replace({"method": RENAMED})
    d = results[results["metric"].isin(["nmae", "nrmse"])]
    d = d.assign(
        P=d["group"].str.split("/").str[0].map(_p_value), subset=d["group"].str.split("/").str[1]
    )

    def mean(name: str) -> pd.Series:
        return table(d, name).groupby(["method", "P", "subset", "metric"])["value"].mean()

    for name in figures(run_dir, results):
        if name.startswith("fig4"):
            fig = _fig4(mean("table1"))
        elif name.startswith("fig7"):
            fig = _fig7(scatter_file(run_dir))
        else:
            fig = _fig56(mean("ablation" if name.startswith("fig5") else "experts"), name[:4])
        fig.tight_layout()
        fig.savefig(Path(run_dir) / name, dpi=120)
        plt.close(fig)


def _fig4(mean: pd.Series) -> plt.Figure:
    """NMAE / NRMSE over P for C_na (dashed) and C_a (solid) customers."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("nmae", "nrmse"), strict=True):
        for method in FIG4_METHODS:
            for subset, style in (("C_na", "--"), ("C_a", "-")):
                try:
                    s = mean.loc[(method, slice(None), subset, metric)]
                except KeyError:
                    continue
                x = s.index.get_level_values("P")
                ax.plot(x, s.values, style, marker="o", label=f"{method} {subset}")
        ax.set_xlabel("sparse share P (%)")
        ax.set_title(metric.upper())
    axes[0].legend(fontsize=7)
    return fig


def _fig56(mean: pd.Series, figure: str) -> plt.Figure:
    """``fig5`` (ablations over P) or ``fig6`` (experts k, one line per P), all customers."""
    sub = mean.xs("all", level="subset")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("nmae", "nrmse"), strict=True):
        s = sub.xs(metric, level="metric").unstack("P")
        if figure == "fig6":
            ks = [int(m[2:]) for m in s.index]
            for pcol in s.columns:
                ax.plot(ks, s[pcol].values, marker="o", label=f"P={pcol}%")
            ax.set_xscale("log", base=2)
        else:
            for method, row in s.iterrows():
                ax.plot(s.columns, row.values, marker="o", label=method)
        ax.set_xlabel("experts k" if figure == "fig6" else "sparse share P (%)")
        ax.set_title(metric.upper())
    axes[0].legend(fontsize=7)
    return fig


def _fig7(path: Path) -> plt.Figure:
    """log1p predicted vs actual LTV, coloured by expert: stage 1 and/or stage 2."""
    z = np.load(path)
    panels = [("Stage 1 (target LtvS)", "ltvs"), ("Stage 2 (CDLtvS)", "cd")]
    panels = [(title, z[key], z[f"{key}_expert"]) for title, key in panels if key in z]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 4.2), sharex=True, sharey=True, squeeze=False
    )
    for ax, (title, pred, expert) in zip(axes[0], panels, strict=True):
        for e in np.unique(expert):
            m = expert == e
            ax.scatter(
                np.log1p(z["y"][m]),
                np.log1p(pred[m]),
                s=6,
                alpha=0.6,
                label=f"expert {e} (n={m.sum()})",
            )
        lim = np.log1p(max(z["y"].max(), pred.max()))
        ax.plot([0, lim], [0, lim], "k:", lw=1)
        ax.set_xlabel("log1p(actual LTV)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("log1p(predicted LTV)")
    return fig
