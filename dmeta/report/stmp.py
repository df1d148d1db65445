"""The STMP run report: results tables from ``results.csv``, the festival plot from
``forecasts/*.csv`` (one file per method: seed 0's forecasts, all festival data, around
the busiest region's largest test festival; columns region, date, actual, forecast,
festival, method).

Methods whose name starts with "STMP" are STMP and its ablations; every other method is
a baseline. Groups are ``setting/day kind`` (``full/festival``, ``one_week/regular``, ...).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dmeta.config import ConfigError  # noqa: E402
from dmeta.report.glance import layered  # noqa: E402
from dmeta.report.tables import markdown_table, significance_table, summary_markdown  # noqa: E402
from dmeta.train.results import summarize  # noqa: E402

PLOT = "stmp_festivals.png"
FORECASTS = "forecasts"


def _is_baseline(method: str) -> bool:
    return not method.startswith("STMP")


def render(run_dir: Path, results: pd.DataFrame) -> str:
    """``results.md``: summary, STMP vs the best baseline and vs every method, MSE by method,
    one-week degradation and the chosen hyperparameters."""
    hp = results.metric.str.startswith("hp:")
    scores, chosen = results[~hp], results[hp]
    datasets = ", ".join(dict.fromkeys(results["dataset"].astype(str)))
    parts = [
        f"# STMP on {datasets}\n",
        f"## All metrics (mean ± std over seeds)\n\n{summary_markdown(summarize(scores))}",
        margin_section(scores),
        pairwise_section(scores),
        mse_section(scores),
        degradation_section(scores),
        hp_section(chosen),
    ]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def margin_section(scores: pd.DataFrame) -> str:
    """STMP vs the best baseline (lowest mean MSE) in each group; paired t-tests over seeds."""
    parts = []
    mse = scores[scores.metric == "mse"]
    for group, part in mse.groupby("group"):
        means = part.groupby("method")["value"].mean()
        cands = means[[_is_baseline(m) for m in means.index]]
        if cands.empty or "STMP" not in means:
            continue
        best = cands.idxmin()
        margin = 100.0 * (means[best] - means["STMP"]) / means[best]
        parts.append(dict(group=group, best_baseline=best, mse_best=means[best],
                          mse_stmp=means["STMP"], stmp_margin_pct=margin))  # fmt: skip
    if not parts:
        return ""
    md = "## STMP vs best baseline (MSE; margin > 0 means STMP is better)\n\n"
    md += markdown_table(pd.DataFrame(parts)) + "\n"
    for row in parts if scores.seed.nunique() > 1 else ():
        sig = significance_table(scores[scores.group == row["group"]], "STMP",
                                 row["best_baseline"], "mse")  # fmt: skip
        md += f"\n{row['group']}: STMP vs {row['best_baseline']}\n\n{markdown_table(sig)}\n"
    return md


def pairwise_section(scores: pd.DataFrame, ours: str = "STMP") -> str:
    """``ours`` (STMP by default) against every other method and ablation in each group: MSE
    margin, paired t over seeds, and in how many seeds ``ours``' MSE is lower."""
    mse = scores[scores.metric == "mse"]
    if ours not in set(mse.method) or mse.seed.nunique() < 2:
        return ""
    cells: dict[str, dict[str, str]] = {}
    for method in dict.fromkeys(mse.method):
        if method == ours:
            continue
        groups = set(mse.group[mse.method == method]) & set(mse.group[mse.method == ours])
        sig = significance_table(mse[mse.group.isin(groups)], method, ours, "mse", by=("group",))
        for row in sig[sig.n >= 2].itertuples(index=False):
            part = mse[(mse.group == row.group) & mse.method.isin([method, ours])]
            pairs = part.pivot(index="seed", columns="method", values="value").dropna()
            wins = int((pairs[ours] < pairs[method]).sum())
            margin = 100.0 * row.diff / row.mean_a
            cells.setdefault(method, {})[row.group] = (
                f"{margin:+.1f}% (p {row.p_value:.2g}, {wins}/{row.n})"
            )
    if not cells:  # ours alone (e.g. a follow-up run of STMP only)
        return ""
    table = pd.DataFrame.from_dict(cells, orient="index").fillna("")
    table = table[sorted(table.columns)].rename_axis("method").reset_index()
    return (
        f"## {ours} against every other method (MSE margin, positive: {ours} better; paired t "
        f"over seeds; seeds where {ours} is better)\n\n{markdown_table(table)}"
    )


def mean_mse(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean MSE over seeds: one row per method, one column per group."""
    mse = scores[scores.metric == "mse"]
    return mse.pivot_table(index="method", columns="group", values="value", aggfunc="mean")


def mse_section(scores: pd.DataFrame) -> str:
    """Mean MSE per method and group, lowest festival MSE (full data) first."""
    table = mean_mse(scores)
    order = "full/festival" if "full/festival" in table else table.columns[0]
    table = table.sort_values(order)
    table = table.astype(object).where(table.notna(), "")  # not run in that setting
    return (
        f"## MSE by method (mean over seeds; lowest {order} first)\n\n"
        f"{markdown_table(table.reset_index().rename_axis(columns=None))}"
    )


def degradation_section(scores: pd.DataFrame) -> str:
    """MSE with one week of festival data over MSE with all of it, per method and day kind."""
    table = mean_mse(scores)
    kinds = [k for k in ("festival", "regular") if {f"full/{k}", f"one_week/{k}"} <= set(table)]
    if not kinds:
        return ""
    ratio = pd.DataFrame(
        {f"{k} one_week / full": table[f"one_week/{k}"] / table[f"full/{k}"] for k in kinds}
    ).dropna()
    ratio = ratio.sort_values(ratio.columns[0]).reset_index()
    return (
        "## Degradation with one week of festival training data (MSE ratio)\n\n"
        f"{markdown_table(ratio)}"
    )


def hp_section(chosen: pd.DataFrame) -> str:
    """The hyperparameters each (method, setting) ran with, and over how many seeds."""
    if chosen.empty:
        return ""
    table = (
        chosen.assign(hyperparameter=chosen.metric.str.removeprefix("hp:"))
        .groupby(["method", "group", "hyperparameter"], sort=False)["value"]
        .agg(lambda v: ", ".join(f"{x:g}" for x in dict.fromkeys(v)))
        .rename("chosen (distinct over seeds)")
        .reset_index()
        .rename(columns={"group": "setting"})
    )
    return (
        "## Hyperparameters (the config's values; with tuning.trials > 1 the grid point of "
        f"lowest validation MSE)\n\n{markdown_table(table)}"
    )


def _short(mse: float) -> str:
    """17,043 -> "17.0k", 1,112,345 -> "1.112M"."""
    return f"{mse / 1e6:.3f}M" if mse >= 1e6 else f"{mse / 1e3:.1f}k"


def glance(spec: dict, base: Path) -> str:
    """The "At a glance" table of a glance spec (``dmeta.report.glance``): one row per spec
    row, ``ours``' mean test MSE and its margin against each method of ``against``
    (positive: ``ours`` better; paired t over seeds).

    Spec keys: ``ours`` (default "STMP"), ``against`` (method names), ``rows``: each with
    ``label``, ``group`` (e.g. ``full/regular``) and ``runs`` (folders relative to ``base``,
    layered in order: a later run's methods replace an earlier one's).
    """
    ours, against = spec.get("ours", "STMP"), spec["against"]
    rows = []
    for row in spec["rows"]:
        scores = layered([base / run for run in row["runs"]])
        mse = scores[(scores.metric == "mse") & (scores.group == row["group"])]
        if ours not in set(mse.method):
            raise ConfigError(f"row {row['label']!r}: no {ours} rows in group {row['group']!r}")
        cells = {"cell": row["label"], ours: _short(mse.value[mse.method == ours].mean())}
        for method in against:
            sig = significance_table(mse, method, ours, "mse", by=())
            top = sig.iloc[0]
            cells[f"vs {method}"] = (
                f"{100.0 * top['diff'] / top.mean_a:+.1f}% (p {top.p_value:.2g})"
            )
        rows.append(cells)
    return markdown_table(pd.DataFrame(rows))


def plots(run_dir: Path, results: pd.DataFrame) -> None:
    """``stmp_festivals.png``: actual vs seed-0 forecasts of STMP and the baselines but ARIMA
    around the festival in ``forecasts/`` (festival days shaded); no-op without forecasts."""
    frames = {
        str(frame.method.iloc[0]): frame
        for frame in (
            pd.read_csv(path, parse_dates=["date"])
            for path in sorted((run_dir / FORECASTS).glob("*.csv"))
        )
    }
    order = list(dict.fromkeys(results.method))
    shown = [m for m in order if m in frames and (m == "STMP" or _is_baseline(m)) and m != "ARIMA"]
    if not shown:
        return
    first = frames[shown[0]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(first.date, first.actual, "k-", lw=2, label="actual")
    for method in shown:
        ax.plot(frames[method].date, frames[method].forecast, lw=1.2, label=method)
    for day in first.date[first.festival]:
        ax.axvspan(day, day + pd.Timedelta(days=1), color="orange", alpha=0.2)
    ax.set_title(f"{first.region.iloc[0]}: one-step forecasts around festivals (shaded)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(run_dir / PLOT, dpi=110)
    plt.close(fig)
