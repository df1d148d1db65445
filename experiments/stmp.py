"""STMP: spatio-temporal meta-learning for festival purchase prediction vs baselines.

Trains STMP (amortized region / date-type latents, jump-LSTM, alternating views) and
its ablations, and the baselines (same-date-type historical average, XGBoost on lags,
LSTM, seasonal ARIMA) on one panel; scores one-step-ahead forecasts of the test period
on regular and festival days, with all festival training data and with one week of it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dmeta import metrics  # noqa: E402
from dmeta.baselines import stmp_baselines as B  # noqa: E402
from dmeta.data.spec import parse_data_spec  # noqa: E402
from dmeta.report.tables import markdown_table, significance_table  # noqa: E402
from dmeta.stmp import data as D  # noqa: E402
from dmeta.stmp import model as M  # noqa: E402
from dmeta.stmp import train as T  # noqa: E402
from dmeta.train.results import write_results, write_run_header  # noqa: E402
from experiments.configs import add_data_parallel_flag, with_overrides  # noqa: E402
from experiments.configs.stmp import STMPConfig, get_config  # noqa: E402

logger = logging.getLogger(__name__)

ABLATIONS = {
    "STMP": {},
    "STMP-deterministic": {"amortized": False},
    "STMP-no-jump": {"jump": False},
    "STMP-joint": {"mode": "joint"},
}
ABLATION_KEYS = {"deterministic": "STMP-deterministic", "no_jump": "STMP-no-jump",
                 "joint": "STMP-joint"}  # fmt: skip
BASELINE_NAMES = {"historical_average": "HistAvg", "xgboost": "XGBoost", "lstm": "LSTM",
                  "arima": "ARIMA", "maml": "MAML"}  # fmt: skip


def load_panel(spec: str, cfg: STMPConfig) -> tuple[str, D.STMPData]:
    """``--data`` -> (dataset name, panel)."""
    parsed = parse_data_spec(spec)
    if parsed.name == "synthetic":
        data = D.make_synthetic(n_regions=cfg.synthetic_regions, n_days=cfg.synthetic_days)
    elif parsed.name == "favorita":
        data = D.load_favorita(parsed.path)
    elif parsed.name == "walmart":
        data = D.load_walmart(parsed.path)
    elif parsed.name == "rossmann":  # 1,115 stores: the first 100 unless --max-regions
        data = D.load_rossmann(parsed.path, max_stores=cfg.max_regions or 100)
    elif parsed.name == "table":
        data = D.load_table(parsed.path)
    else:
        raise ValueError(
            f"--data {spec!r}: STMP reads synthetic, favorita, walmart, rossmann, table"
        )
    if cfg.max_regions is not None:
        keep = slice(0, cfg.max_regions)
        data = dataclasses.replace(
            data, y=data.y[keep], observed=data.observed[keep],
            date_type=data.date_type[keep], attrs=data.attrs[keep], regions=data.regions[keep],
        )  # fmt: skip
    return parsed.name, data


def fit_stmp(prep: D.Prepared, cfg: STMPConfig, seed: int, *, amortized=True, jump=True,
             mode="alternate") -> np.ndarray:  # fmt: skip
    """Trains one STMP variant; scaled predictions for ``prep.test``."""
    graphdef, params = M.build(
        window=cfg.window, period=prep.data.period, n_types=prep.data.n_types,
        n_attrs=prep.data.attrs.shape[1], n_regions=len(prep.data.regions), latent=cfg.latent,
        hidden=cfg.hidden, jump=jump, amortized=amortized, seed=seed,
    )  # fmt: skip
    params, _ = T.fit(
        graphdef, params, prep, key=jax.random.key(seed), n_steps=cfg.n_steps, lr=cfg.lr,
        mode=mode, switch_every=cfg.switch_every, n_tasks=cfg.n_tasks, n_query=cfg.n_query,
        n_context=cfg.n_context, n_samples=cfg.n_samples, beta=cfg.beta,
        shard=cfg.data_parallel,
    )  # fmt: skip
    return T.predict(graphdef, params, prep, key=jax.random.key(seed + 1000),
                     n_context=cfg.eval_context)  # fmt: skip


def fit_baseline(name: str, prep: D.Prepared, cfg: STMPConfig, seed: int) -> np.ndarray:
    if name == "historical_average":
        return B.historical_average(prep)
    if name == "xgboost":
        return B.xgboost_forecast(prep, seed=seed, lags=cfg.window,
                                  n_estimators=cfg.xgb_estimators)  # fmt: skip
    if name == "lstm":
        return B.lstm_forecast(prep, seed=seed, window_len=cfg.window, hidden=cfg.hidden,
                               n_steps=cfg.lstm_steps)  # fmt: skip
    if name == "arima":
        return B.arima_forecast(prep)
    if name == "maml":
        return B.maml_forecast(prep, seed=seed, window_len=cfg.window, hidden=cfg.hidden,
                               n_steps=cfg.lstm_steps, n_tasks=cfg.n_tasks, n_query=cfg.n_query,
                               n_support=cfg.n_context // 2)  # fmt: skip
    raise ValueError(f"unknown baseline {name!r}; known: {list(BASELINE_NAMES)}")


def score(prep: D.Prepared, pred_scaled: np.ndarray) -> dict[str, dict[str, float]]:
    """Metrics in original units on regular and festival test days."""
    rows, cols = np.nonzero(prep.test)
    y = prep.data.y[rows, cols]
    pred = pred_scaled * prep.scale[rows]
    fest = prep.data.is_festival[rows, cols]
    out = {}
    for group, sel in (("regular", ~fest), ("festival", fest)):
        if sel.any():
            out[group] = {
                name: float(fn(y[sel], pred[sel]))
                for name, fn in (("mse", metrics.mse), ("mae", metrics.mae),
                                 ("rmse", metrics.rmse), ("mape", metrics.mape))
            }  # fmt: skip
    return out


def run_setting(data, dataset, cfg, seeds, setting, methods, baselines):
    """All methods x seeds in one setting ("full" or "one_week"); long rows + predictions."""
    n_days = data.y.shape[1]
    cutoff = n_days - min(cfg.test_days, n_days // 4)  # weekly panels: the last quarter
    prep = D.prepare(data, cutoff=cutoff, window=cfg.window,
                     one_festival_week=setting == "one_week")  # fmt: skip
    rows, preds = [], {}
    for seed in range(seeds):
        for name in methods:
            start = time.perf_counter()
            preds[name, seed] = fit_stmp(prep, cfg, seed, **ABLATIONS[name])
            logger.info("%s %s seed %d: %.1fs", setting, name, seed, time.perf_counter() - start)
        for base in baselines:
            if base == "arima" and seed > 0:  # deterministic: fit once, same value per seed
                preds["ARIMA", seed] = preds["ARIMA", 0]
                continue
            start = time.perf_counter()
            preds[BASELINE_NAMES[base], seed] = fit_baseline(base, prep, cfg, seed)
            logger.info("%s %s seed %d: %.1fs", setting, base, seed, time.perf_counter() - start)
    for (method, seed), pred in preds.items():
        for group, values in score(prep, pred).items():
            for metric, value in values.items():
                rows.append(dict(experiment="stmp", dataset=dataset, method=method,
                                 group=f"{setting}/{group}", seed=seed, metric=metric,
                                 value=value))  # fmt: skip
    return rows, prep, preds


def plot_festivals(prep: D.Prepared, preds: dict, methods: list[str], path: Path) -> None:
    """Predicted vs actual around the test period's festival days (busiest region, seed 0)."""
    rows, cols = np.nonzero(prep.test)
    region = int(np.argmax(prep.scale))
    fest_days = np.flatnonzero(prep.test[region] & prep.data.is_festival[region])
    if fest_days.size == 0:
        return
    peak = fest_days[np.argmax(prep.data.y[region, fest_days])]
    span = np.arange(max(peak - 21, 0), min(peak + 14, prep.data.y.shape[1]))
    fig, ax = plt.subplots(figsize=(9, 4))
    mine = rows == region
    day_pos = {t: i for i, t in enumerate(cols[mine])}
    shown = [t for t in span if t in day_pos]
    dates = prep.data.dates[shown]
    ax.plot(dates, prep.data.y[region, shown], "k-", lw=2, label="actual")
    for method in methods:
        pred = preds[method, 0][mine] * prep.scale[region]
        ax.plot(dates, [pred[day_pos[t]] for t in shown], lw=1.2, label=method)
    for t in shown:
        if prep.data.is_festival[region, t]:
            ax.axvspan(prep.data.dates[t], prep.data.dates[t] + pd.Timedelta(days=1),
                       color="orange", alpha=0.2)  # fmt: skip
    ax.set_title(f"{prep.data.regions[region]}: one-step forecasts around festivals (shaded)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def margin_table(df: pd.DataFrame, baselines: list[str]) -> str:
    """STMP vs the best baseline (lowest mean MSE) in each group; paired t-test over seeds."""
    parts = []
    mse = df[df.metric == "mse"]
    for group, part in mse.groupby("group"):
        means = part.groupby("method")["value"].mean()
        cands = means[means.index.isin(baselines)]
        if cands.empty or "STMP" not in means:
            continue
        best = cands.idxmin()
        margin = 100.0 * (means[best] - means["STMP"]) / means[best]
        parts.append(dict(group=group, best_baseline=best, mse_best=means[best],
                          mse_stmp=means["STMP"], stmp_margin_pct=margin))  # fmt: skip
    table = pd.DataFrame(parts)
    md = "## STMP vs best baseline (MSE; margin > 0 means STMP is better)\n\n"
    md += markdown_table(table) + "\n"
    for row in parts:
        if df.seed.nunique() > 1:
            sig = significance_table(df[df.group == row["group"]], "STMP", row["best_baseline"],
                                     "mse")  # fmt: skip
            md += f"\n{row['group']}: STMP vs {row['best_baseline']}\n\n{markdown_table(sig)}\n"
    return md


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="STMP training steps")
    parser.add_argument("--no-one-week", action="store_true", help="skip the robustness runs")
    add_data_parallel_flag(parser, "each training step's (region, date type) tasks")


def run(*, data: str, out: Path, smoke: bool, seeds: int, command: str, steps=None,
        no_one_week=False, data_parallel=None, **_) -> pd.DataFrame:  # fmt: skip
    """Runs the protocol; writes results.csv/md, command.txt, config.json, a PNG."""
    cfg = get_config(smoke)
    cfg = with_overrides(
        cfg, n_steps=steps, one_week=False if no_one_week else None, data_parallel=data_parallel
    )
    out = Path(out)
    write_run_header(out, command, dataclasses.asdict(cfg))
    dataset, panel = load_panel(data, cfg)
    methods = ["STMP"] + [ABLATION_KEYS[a] for a in cfg.ablations]
    baselines = list(cfg.baselines)
    rows, prep, preds = run_setting(panel, dataset, cfg, seeds, "full", methods, baselines)
    shown = ["STMP"] + [BASELINE_NAMES[b] for b in baselines if b != "arima"]
    plot_festivals(prep, preds, shown, out / "stmp_festivals.png")
    if cfg.one_week:
        more, _, _ = run_setting(panel, dataset, cfg, seeds, "one_week", ["STMP"], baselines)
        rows += more
    df = pd.DataFrame(rows)
    names = [BASELINE_NAMES[b] for b in baselines]
    write_results(df, out, title=f"STMP on {dataset}", extra_md=margin_table(df, names))
    return df


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic panel; STMP vs the same-date-type average and XGBoost."""
    cfg = get_config(smoke=True)
    if not smoke:
        cfg = dataclasses.replace(get_config(), n_steps=300, synthetic_regions=12, lstm_steps=200,
                                  xgb_estimators=100)  # fmt: skip
    cfg = dataclasses.replace(cfg, ablations=(), baselines=("historical_average", "xgboost"),
                              one_week=False)  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, panel = load_panel("synthetic", cfg)
    rows, prep, preds = run_setting(panel, "synthetic", cfg, 1, "full", ["STMP"],
                                    list(cfg.baselines))  # fmt: skip
    plot_festivals(prep, preds, ["STMP", "HistAvg", "XGBoost"], out / "stmp_festivals.png")
    table = pd.DataFrame(rows).pivot_table(index=["group", "method"], columns="metric",
                                           values="value").reset_index()  # fmt: skip
    return (
        "## STMP (synthetic festival panel)\n\n"
        "One-step forecasts of a synthetic region x day panel whose festival uplift is set by "
        "region attributes; metrics in original units.\n\n"
        f"{markdown_table(table)}\n\n![festivals](stmp/stmp_festivals.png)\n"
    )
