"""Where one STMP-experiment method loses regular test days to another: a per-target diagnosis.

Reads the test forecasts that a run with ``protocol.test_forecasts=true`` writes
(``forecasts/<setting>__<method>__seed<k>.test.csv.gz``), pairs two methods' forecasts of the
same regular-day targets over the seeds both have, and splits the regular-day MSE gap
(``method`` minus ``against``, summed squared errors) by test month, weekday, days to the
store's nearest festival day, store size, closed and very low days in the window before,
and the size of the errors. Writes ``gap.md`` (with this command at its top) and ``gap.png``
(monthly regular-day MSE of both) into the folder.

    python -m experiments.stmp_gap experiments/results/stmp/favorita_round2_forecasts \\
        --method STMP --against LSTM
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dmeta.report.tables import markdown_table  # noqa: E402
from dmeta.stmp.protocol import FORECASTS  # noqa: E402
from dmeta.train.harness import write_atomic  # noqa: E402

KEYS = ["seed", "region", "date"]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WINDOW = 28  # the input window of the STMP experiments (``model.window``)
GAP_BINS = [-1, 0, 1, 3, np.inf]
GAP_LABELS = ["none", "1", "2-3", "4+"]
NEAR_BINS = [0, 1, 3, 7, 14, np.inf]
NEAR_LABELS = ["1", "2-3", "4-7", "8-14", "15+ or none"]
LOW_FRACTION = 0.4  # a very low day: below this fraction of the store's median test day
LOW_WINDOW = 7


def read_forecasts(folder: Path, method: str, setting: str = "full") -> pd.DataFrame:
    """Every seed's test forecasts of ``method``: the test-frame columns and ``seed``."""
    frames = []
    for path in sorted((folder / FORECASTS).glob(f"{setting}__{method}__seed*.test.csv.gz")):
        seed = int(path.name.split("__seed")[1].split(".")[0])
        frames.append(pd.read_csv(path, parse_dates=["date"]).assign(seed=seed))
    if not frames:
        raise SystemExit(
            f"{folder / FORECASTS}: no {setting}__{method}__seed*.test.csv.gz (run with "
            "--set protocol.test_forecasts=true)"
        )
    return pd.concat(frames, ignore_index=True)


def festival_distance(frame: pd.DataFrame) -> pd.Series:
    """Days from each row to its store's nearest test-period festival day (inf: none)."""
    out = pd.Series(np.inf, index=frame.index)
    for _, rows in frame.groupby(["seed", "region"]):
        fest = np.sort(rows.date[rows.festival].to_numpy().astype("datetime64[D]").astype(int))
        if fest.size == 0:
            continue
        days = rows.date.to_numpy().astype("datetime64[D]").astype(int)
        pos = np.clip(np.searchsorted(fest, days), 1, fest.size) - 1
        nxt = np.clip(pos + 1, 0, fest.size - 1)
        near = np.minimum(np.abs(days - fest[pos]), np.abs(days - fest[nxt]))
        out[rows.index] = near
    return out


def window_gaps(frame: pd.DataFrame, window: int = WINDOW) -> pd.Series:
    """Per row: the days among the ``window`` before it, inside the test period, on which
    its store has no test target (a closed store: Favorita's close on December 25 and
    January 1; days before the test period are not seen, so early rows count fewer)."""
    out = pd.Series(0, index=frame.index)
    start = frame.date.min()
    for _, rows in frame.groupby(["seed", "region"]):
        days = rows.date.to_numpy().astype("datetime64[D]").astype(int)
        present = np.zeros(days.max() - days.min() + 1, bool)
        present[days - days.min()] = True
        cum = np.concatenate([[0], np.cumsum(~present)])  # missing days before each offset
        first = np.maximum(days - window, np.datetime64(start, "D").astype(int)) - days.min()
        out[rows.index] = cum[days - days.min()] - cum[np.maximum(first, 0)]
    return out


def low_days(
    frame: pd.DataFrame, window: int = LOW_WINDOW, fraction: float = LOW_FRACTION
) -> pd.Series:
    """Per row: the days among the ``window`` before it on which its store was open but
    very low (actual below ``fraction`` of the store's median test-period actual: partial
    closures, which ``protocol.closed_days`` does not fill)."""
    out = pd.Series(0, index=frame.index)
    for _, rows in frame.groupby(["seed", "region"]):
        days = rows.date.to_numpy().astype("datetime64[D]").astype(int)
        low = np.zeros(days.max() - days.min() + 1, int)
        low[days - days.min()] = rows.actual.to_numpy() < fraction * rows.actual.median()
        cum = np.concatenate([[0], np.cumsum(low)])  # low days before each offset
        first = np.maximum(days - days.min() - window, 0)
        out[rows.index] = cum[days - days.min()] - cum[first]
    return out


def paired(folder: Path, method: str, against: str) -> pd.DataFrame:
    """Regular-day targets both methods forecast (same seed): actual, ``se_a`` (``method``'s
    squared error), ``se_b`` (``against``'s), ``gap`` = se_a - se_b, and breakdown keys."""
    a, b = read_forecasts(folder, method), read_forecasts(folder, against)
    both = a.merge(b[KEYS + ["forecast"]], on=KEYS, suffixes=("_a", "_b"), validate="1:1")
    both["near_festival"] = pd.cut(
        festival_distance(both), NEAR_BINS, labels=NEAR_LABELS, right=True
    )
    both["window_gaps"] = pd.cut(window_gaps(both), GAP_BINS, labels=GAP_LABELS)
    both["low_days"] = np.where(low_days(both) > 0, "1+", "none")
    both = both[~both.festival].copy()
    both["se_a"] = (both.actual - both.forecast_a) ** 2
    both["se_b"] = (both.actual - both.forecast_b) ** 2
    both["gap"] = both.se_a - both.se_b
    both["month"] = both.date.dt.strftime("%Y-%m")
    both["weekday"] = pd.Categorical(both.date.dt.day_name().str[:3], WEEKDAYS, ordered=True)
    size = both.groupby("region").actual.mean().rank(method="first")
    bins = min(5, len(size))
    quintile = pd.qcut(size, bins, labels=[f"Q{i + 1}" for i in range(bins)])
    both["store_size"] = both.region.map(quintile).astype(str)
    top = both.se_a.quantile(0.99)
    both["error_size"] = np.where(both.se_a >= top, f"{method}'s top 1%", "other 99%")
    return both


def breakdown(both: pd.DataFrame, key: str, method: str, against: str) -> pd.DataFrame:
    """Per value of ``key``: share of targets, both MSEs, their ratio, share of the gap."""
    total = both.gap.sum()
    g = both.groupby(key, observed=True)
    return pd.DataFrame({
        "targets": g.size() / len(both),
        f"MSE {method}": g.se_a.mean(),
        f"MSE {against}": g.se_b.mean(),
        "ratio": g.se_a.mean() / g.se_b.mean(),
        "share of gap": g.gap.sum() / total,
    }).reset_index()  # fmt: skip


def bias(both: pd.DataFrame, method: str, against: str) -> pd.DataFrame:
    """Per month: each method's mean error (forecast - actual) relative to the mean actual."""
    g = both.assign(e_a=both.forecast_a - both.actual, e_b=both.forecast_b - both.actual)
    g = g.groupby("month")
    scale = g.actual.mean()
    return pd.DataFrame({
        f"bias {method}": g.e_a.mean() / scale,
        f"bias {against}": g.e_b.mean() / scale,
    }).reset_index()  # fmt: skip


def report(folder: Path, method: str, against: str, command: str) -> str:
    """``gap.md``'s text (and ``gap.png``): the breakdowns of the regular-day gap."""
    both = paired(folder, method, against)
    seeds = sorted(both.seed.unique())
    mse_a, mse_b = both.se_a.mean(), both.se_b.mean()
    lines = [
        f"# Regular-day gap: {method} against {against} (`{folder.name}`)\n",
        f"Regenerate: `{command}`\n",
        f"Seeds {', '.join(map(str, seeds))}; {len(both):,} regular-day targets (pooled over "
        f"seeds). Regular-day MSE {method} {mse_a:,.0f}, {against} {mse_b:,.0f} "
        f"(ratio {mse_a / mse_b:.3f}). 'share of gap': the group's part of the summed "
        f"squared-error difference ({method} minus {against}); the shares add up to 1, and "
        "a group where the difference runs against the total's sign has a negative share.\n",
    ]
    for key, title in (
        ("month", "By test month"),
        ("weekday", "By weekday"),
        ("near_festival", "By days to the store's nearest test-period festival day"),
        ("store_size", "By store size (quintiles of mean regular-day transactions; Q1 smallest)"),
        ("window_gaps", f"By closed days (no test target) among the {WINDOW} days before"),
        (
            "low_days",
            f"By very low open days (below {LOW_FRACTION:g} of the store's median test day) "
            f"among the {LOW_WINDOW} days before",
        ),
        ("error_size", f"By the size of {method}'s error"),
    ):
        table = breakdown(both, key, method, against)
        lines.append(f"## {title}\n\n{markdown_table(table, floatfmt='.3g')}\n")
    by_date = both.groupby("date").gap.sum().sort_values(ascending=False) / both.gap.sum()
    top = by_date.head(10).rename("share of gap").reset_index()
    top["date"] = top.date.dt.strftime("%Y-%m-%d (%a)")
    lines.append(
        f"## The ten dates with the largest gap\n\n{markdown_table(top, floatfmt='.3g')}\n"
    )
    lines.append(
        "## Mean error relative to the mean actual, by month\n\n"
        f"{markdown_table(bias(both, method, against), floatfmt='.3g')}\n"
    )
    plot(both, method, against, folder / "gap.png")
    return "\n".join(lines)


def plot(both: pd.DataFrame, method: str, against: str, path: Path) -> None:
    """Monthly regular-day MSE of both methods."""
    monthly = both.groupby("month")[["se_a", "se_b"]].mean()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(monthly.index, monthly.se_a, marker="o", label=method)
    ax.plot(monthly.index, monthly.se_b, marker="o", label=against)
    ax.set_ylabel("regular-day MSE")
    ax.set_title(f"Regular test days by month: {method} against {against}")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """CLI: a run folder with test forecasts; writes ``gap.md`` and ``gap.png`` there."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--method", default="STMP")
    ap.add_argument("--against", default="LSTM")
    args = ap.parse_args(argv)
    command = "python -m experiments.stmp_gap " + shlex.join(
        [str(args.folder), "--method", args.method, "--against", args.against]
    )
    text = report(args.folder, args.method, args.against, command)
    write_atomic(args.folder / "gap.md", text)
    print(text)


if __name__ == "__main__":
    main()
