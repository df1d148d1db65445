"""RMLDP run report: tables and figures from a run folder's CSV files.

Reads ``results.csv`` (group means and per-segment scores as groups ``seg:<id>`` of MAPE,
WAPE, sMAPE and MSE (runs before issue #19 have MAPE and MSE only), |T_c| sweep
rows as groups ``seq_len=<n>/<group>``, ``hp:<name>`` choices, the ``silhouette`` of the
segment representations), ``protocol.csv`` (segments per role) and, for the map,
``representations.csv``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.report.tables import markdown_table, summary_markdown
from dmeta.train.results import summarize

logger = logging.getLogger(__name__)

METRICS = ("mape", "wape", "smape", "mse")
SWEEP = re.compile(r"^seq_len=(?P<seq_len>\d+)/(?P<group>.+)$")
MAP_FILE = "rmldp_segment_map.png"
SWEEP_FILE = "rmldp_sweep.png"


def main_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the main setting: group means, seconds (no segments, sweep or hp rows)."""
    group = results["group"].astype(str)
    keep = ~group.str.startswith("seg:") & ~group.str.match(SWEEP.pattern)
    keep &= ~results["metric"].str.startswith("hp:") & (results["metric"] != "silhouette")
    return results[keep]


def per_segment(results: pd.DataFrame) -> pd.DataFrame:
    """Per target segment scores: ``segment, method, seed`` and the ``METRICS`` the run has."""
    rows = results[results["group"].astype(str).str.startswith("seg:")]
    wide = rows.pivot_table(
        index=["group", "method", "seed"], columns="metric", values="value", dropna=False
    ).reset_index()
    wide["segment"] = wide.pop("group").str.removeprefix("seg:")
    return wide[["segment", "method", "seed", *present(wide)]]


def present(frame: pd.DataFrame) -> list[str]:
    """The ``METRICS`` among ``frame``'s columns, in table order."""
    return [m for m in METRICS if m in frame.columns]


def paired_test(segments: pd.DataFrame, a: str, b: str) -> dict:
    """Paired tests over target segments of seed-averaged MAPE, ``a`` vs ``b``: the t-test
    (two-sided and one-sided a < b) and the Wilcoxon signed-rank test (two-sided), which
    a few segments with extreme MAPEs cannot carry; means and medians of both."""
    wide = segments.groupby(["segment", "method"])["mape"].mean().unstack()
    wide = wide[[a, b]].dropna()
    x, y = wide[a].to_numpy(), wide[b].to_numpy()
    t, p = metrics.paired_ttest(x, y)
    _, p_less = metrics.paired_ttest(x, y, alternative="less")
    return {
        "a": a,
        "b": b,
        "segments": len(wide),
        "mape_a": wide[a].mean(),
        "mape_b": wide[b].mean(),
        "median_a": wide[a].median(),
        "median_b": wide[b].median(),
        "t": t,
        "p_two_sided": p,
        "p_a_less": p_less,
        "p_wilcoxon": metrics.wilcoxon(x, y)[1],
        "a_wins": int((x < y).sum()),
    }


def sweep(results: pd.DataFrame) -> pd.DataFrame:
    """The |T_c| sweep (Figure 6): ``seq_len, group, mape`` (seed 0)."""
    parts = results["group"].astype(str).str.extract(SWEEP)
    sel = parts["seq_len"].notna() & (results["metric"] == "mape")
    frame = parts[sel].assign(mape=results.loc[sel, "value"])
    return frame.astype({"seq_len": int}).sort_values(["seq_len", "group"], kind="stable")


def _per_group(rows: pd.DataFrame, metric: str) -> str:
    part = rows[(rows["metric"] == metric) & (rows["group"] != "all")]
    if part["group"].nunique() < 2:
        return ""
    table = part.pivot_table(index="method", columns="group", values="value", sort=False)
    return f"## {metric.upper()} per group (mean over seeds)\n\n" + markdown_table(
        table.reset_index()
    )


def _tuning(results: pd.DataFrame) -> str:
    hp = results[results["metric"].str.startswith("hp:") & (results["group"] == "all")]
    if hp.empty:
        return ""
    means = hp.groupby(["method", "metric"], sort=False)["value"].mean().reset_index()
    chosen = means.groupby("method", sort=False).apply(
        lambda part: ", ".join(f"{m[3:]}={v:.4g}" for m, v in zip(part["metric"], part["value"])),
        include_groups=False,
    )
    table = pd.DataFrame({"method": chosen.index, "chosen (mean over seeds)": chosen.to_numpy()})
    return "## Hyperparameters chosen on meta-validation MAPE\n\n" + markdown_table(table)


def robust(segments: pd.DataFrame, share: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Median across target segments beside the mean, and the segments that dominate a mean.

    Args:
      segments: ``per_segment`` frame.
      share: a segment dominates a method's mean when its seed-averaged value is more than
        this share of the sum over segments.

    Returns:
      ``(table, dominant)``: per method the mean and median of each seed-averaged metric
      over segments; and ``method, metric, segment, share`` for every dominating segment.
    """
    names = present(segments)
    per = segments.groupby(["method", "segment"], sort=False)[names].mean()
    table = per.groupby("method", sort=False).agg(["mean", "median"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    dominant = []
    for metric in names:
        shares = per[metric] / per[metric].groupby("method").transform("sum")
        for (method, segment), value in shares[shares > share].items():
            dominant.append(dict(method=method, metric=metric, segment=segment, share=value))
    return table.reset_index(), pd.DataFrame(dominant)


def _robust(results: pd.DataFrame) -> str:
    segments = per_segment(results)
    if segments.empty:
        return ""
    table, dominant = robust(segments)
    text = (
        "## Mean and median over target segments (seed-averaged)\n\n"
        "A few extreme segments can move a mean; the median cannot.\n\n" + markdown_table(table)
    )
    if len(dominant):
        logger.warning("segments dominating a mean error:\n%s", dominant.to_string(index=False))
        text += "\nSegments holding more than half of a method's summed error:\n\n"
        text += markdown_table(dominant)
    return text


def _tests(results: pd.DataFrame) -> str:
    segments = per_segment(results)
    methods = set(segments["method"])
    full = "RMLDP" if "RMLDP" in methods else "RMLDP-g"
    if not {full, "MAML"} <= methods:
        return ""
    test = pd.DataFrame([paired_test(segments, full, "MAML")])
    return f"## {full} vs MAML, paired tests over target segments\n\n" + markdown_table(test)


def _figures(results: pd.DataFrame) -> str:
    parts = []
    sil = results[results["metric"] == "silhouette"]
    if len(sil):
        parts.append(
            f"## Segment representations ({sil['method'].iloc[0]}, seed 0)\n\n"
            f"![map]({MAP_FILE})\n\nsilhouette by group: {sil['value'].iloc[0]}\n"
        )
    table = sweep(results)
    if len(table):
        wide = table.pivot(index="seq_len", columns="group", values="mape").reset_index()
        parts.append(
            f"## |T_c| sweep (seed 0)\n\n![sweep]({SWEEP_FILE})\n\n" + markdown_table(wide)
        )
    return "\n".join(parts)


def _graph_warning(counts: dict[str, int]) -> str:
    """A warning when most segments have no link in the knowledge graph ("" otherwise)."""
    isolated = counts.get("segments without a link", 0)
    if isolated <= counts["segments"] / 2:
        return ""
    return (
        f"**Warning: the knowledge graph is nearly empty**: {isolated} of {counts['segments']} "
        f"segments have no link ({counts.get('graph links', 0)} links); the graph variants "
        "learn little from it.\n"
    )


def render(run_dir: Path, results: pd.DataFrame) -> str:
    """The ``results.md`` of an RMLDP run folder."""
    rows = main_rows(results)
    dataset = ", ".join(dict.fromkeys(results["dataset"].astype(str)))
    parts = [
        f"# RMLDP on {dataset}\n",
        "## Target segments (mean ± std over seeds)\n\n"
        + summary_markdown(summarize(rows[rows["group"] == "all"])),
    ]
    protocol = Path(run_dir) / "protocol.csv"
    if protocol.exists():
        counts = pd.read_csv(protocol)
        parts.append(
            "Segments: " + ", ".join(f"{r.role} {r.segments}" for r in counts.itertuples()) + ".\n"
        )
        parts.append(_graph_warning(dict(zip(counts["role"], counts["segments"]))))
    parts += [_robust(results), *(_per_group(rows, m) for m in METRICS)]
    parts.append(_tuning(results))
    parts += [_tests(results), _figures(results)]
    return "\n".join(p for p in parts if p)


def plots(run_dir: Path, results: pd.DataFrame) -> None:
    """``rmldp_sweep.png`` (Figure 6) and ``rmldp_segment_map.png`` (Figure 7) when their
    data are in the folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = sweep(results)
    if len(table):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for group, part in table.groupby("group"):
            ax.plot(part["seq_len"], part["mape"], marker="o", label=str(group))
        ax.set_xlabel("sequence length |T_c|")
        ax.set_ylabel("MAPE (target segments)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(run_dir) / SWEEP_FILE, dpi=120)
        plt.close(fig)
    reps = Path(run_dir) / "representations.csv"
    if reps.exists():
        plot_map(pd.read_csv(reps, dtype={"segment": str, "group": str}), Path(run_dir) / MAP_FILE)


def plot_map(reps: pd.DataFrame, path: Path) -> None:
    """First two principal components of the segment representations q, by group."""
    import matplotlib.pyplot as plt

    q = reps.filter(regex=r"^q\d+$").to_numpy()
    groups = reps["group"].to_numpy()
    centered = q - q.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ vt[:2].T
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for group in np.unique(groups):
        sel = groups == group
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, label=str(group))
    ax.set_title(f"segment representations q ({len(q)} segments)", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
