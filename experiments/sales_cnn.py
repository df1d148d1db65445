"""Sales CNN over Data Frames (Zhao & Wang): Table 1 analog (MSE per region) and sweeps.

Methods: ARIMA, FE+GBRT, DNN, CNN, CNN+WD, CNN+WD+TL, Single-CNN (and a naive
last-interval reference). Sweeps of CNN+WD+TL: MSE of the average sales per
period vs target interval length (Figure 5), MSE vs frame length (Figure 6) and
MSE vs beta (Figure 7).

Data: ``synthetic``, ``frat[:PATH]`` (main), ``cainiao[:PATH]``,
``completejourney[:PATH]``, ``itemlog:DIR`` (``DIR/log.csv`` with
``item_id, region_id, ds, <indicators>`` where the first indicator is the sales
target, and ``DIR/attributes.csv`` with ``item_id, brand, category``; daily).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.spec import parse_data_spec
from dmeta.report.tables import markdown_table
from dmeta.sales_cnn.frames import SalesPanel
from dmeta.sales_cnn.loaders import (
    load_cainiao,
    load_completejourney,
    load_frat,
    panel_from_long,
    synthetic_panel,
)
from dmeta.sales_cnn.pipeline import (
    METHODS,
    forecast_baselines,
    forecast_networks,
    prepare,
    region_mse,
)
from dmeta.train.results import write_results, write_run_header
from experiments.configs import add_data_parallel_flag, with_overrides
from experiments.configs.sales_cnn import DAILY, SalesCNNConfig, get_config

logger = logging.getLogger(__name__)

NAME = "sales_cnn"
NETWORKS = ("DNN", "CNN", "CNN+WD", "CNN+WD+TL", "Single-CNN")
SIZE_OVERRIDES = (  # numeric config fields settable from the command line
    "length",
    "horizon",
    "n_test",
    "n_regions",
    "maps",
    "hidden",
    "dnn_hidden",
    "epochs",
    "finetune_epochs",
    "beta",
    "sweep_seeds",
    "gbrt_estimators",
)
OVERRIDES = (*SIZE_OVERRIDES, "compute_dtype", "data_parallel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Size overrides of the config, and which parts to run."""
    for name in SIZE_OVERRIDES:
        kind = float if name in ("epochs", "finetune_epochs", "beta") else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="compute dtype of the CNNs (parameters and loss stay float32)",
    )
    add_data_parallel_flag(parser, "minibatches and the per-region programs")
    parser.add_argument("--no-sweeps", action="store_true", help="Table 1 only")


def load_panel(spec: str, *, seed: int = 0) -> tuple[SalesPanel, bool]:
    """(panel, daily) for a ``--data`` spec."""
    data = parse_data_spec(spec)
    if data.name == "synthetic":
        return synthetic_panel(seed, n_regions=5, n_items=30, n_periods=130)[0], False
    loaders = {"frat": (load_frat, False), "cainiao": (load_cainiao, True)}
    loaders["completejourney"] = (load_completejourney, True)
    if data.name in loaders:
        load, daily = loaders[data.name]
        return load(data.path), daily
    if data.name == "itemlog":
        log = pd.read_csv(data.path / "log.csv")
        indicators = [c for c in log.columns if c not in ("item_id", "region_id", "ds")]
        attributes = pd.read_csv(data.path / "attributes.csv")
        panel = panel_from_long(
            log,
            attributes,
            indicators=indicators,
            target=indicators[0],
            freq="D",
            source=str(data.path / "log.csv"),
        )
        return panel, True
    raise ValueError(f"--data {spec!r}: unknown dataset {data.name!r} for {NAME}")


def top_regions(panel: SalesPanel, n: int) -> SalesPanel:
    """The ``n`` regions with the largest total sales, largest first."""
    return panel.select_regions(np.argsort(-panel.sales.sum((1, 2)), kind="stable")[:n])


def _net_opts(cfg: SalesCNNConfig) -> dict:
    keys = ("maps", "hidden", "orders", "rate", "dnn_hidden", "dnn_layers", "beta")
    keys += ("learning_rate", "batch_size", "epochs", "finetune_epochs", "compute_dtype")
    return {k: getattr(cfg, k) for k in keys} | {"shard": cfg.data_parallel}


def _rows(dataset, regions, method, seed, mse, experiment=NAME, metric="mse"):
    rows = [(experiment, dataset, method, r, seed, metric, float(v)) for r, v in zip(regions, mse)]
    return rows + [(experiment, dataset, method, "average", seed, metric, float(np.mean(mse)))]


def table1(panel: SalesPanel, cfg: SalesCNNConfig, *, dataset: str, seeds: int) -> list[tuple]:
    """Rows of the Table 1 analog: MSE per region and averaged, every method and seed."""
    data = prepare(
        panel,
        length=cfg.length,
        horizon=cfg.horizon,
        n_test=cfg.n_test,
        train_periods=cfg.train_periods,
    )
    logger.info("train samples per region %s, test %s", np.asarray(data.train.n), data.test_n)
    rows = []
    start = time.perf_counter()
    fixed = forecast_baselines(data, seed=0, methods=("ARIMA", "Naive"), arima_lags=cfg.arima_lags)
    logger.info("ARIMA + naive: %.0f s", time.perf_counter() - start)
    for seed in range(seeds):
        start = time.perf_counter()
        preds = dict(fixed)
        preds |= forecast_baselines(
            data, seed=seed, methods=("FE+GBRT",), gbrt_estimators=cfg.gbrt_estimators
        )
        preds |= forecast_networks(data, seed=seed, methods=NETWORKS, **_net_opts(cfg))
        for method in METHODS:
            rows += _rows(dataset, data.regions, method, seed, region_mse(data, preds[method]))
        logger.info("seed %d: %.0f s", seed, time.perf_counter() - start)
    return rows


SWEEPS = {
    "horizon": ("sweep_horizons", "target interval length k (periods)"),
    "length": ("sweep_lengths", "Data Frame length T (periods)"),
    "beta": ("sweep_betas", "weight decay beta (per period)"),
}


def sweeps(panel: SalesPanel, cfg: SalesCNNConfig, *, dataset: str) -> list[tuple]:
    """CNN+WD+TL average MSE across k (as MSE of per-period average sales), T and beta."""
    rows = []
    for name, (field, _) in SWEEPS.items():
        for value in getattr(cfg, field):
            run_cfg = dataclasses.replace(cfg, **{name: value})
            data = prepare(
                panel,
                length=run_cfg.length,
                horizon=run_cfg.horizon,
                n_test=run_cfg.n_test,
                train_periods=run_cfg.train_periods,
            )
            for seed in range(cfg.sweep_seeds):
                pred = forecast_networks(
                    data, seed=seed, methods=("CNN+WD+TL",), **_net_opts(run_cfg)
                )["CNN+WD+TL"]
                mse = region_mse(data, pred)
                if name == "horizon":
                    mse = mse / value**2  # MSE of the average sales per period (Figure 5)
                rows += _rows(
                    dataset,
                    [f"{name}={value}"],
                    "CNN+WD+TL",
                    seed,
                    [mse.mean()],
                    f"{NAME}_sweep_{name}",
                )[:1]
    return rows


def plot_sweeps(df: pd.DataFrame, out: Path) -> list[str]:
    """One PNG per sweep (mean ± std over seeds); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for name, (_, label) in SWEEPS.items():
        part = df[df["experiment"] == f"{NAME}_sweep_{name}"]
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
        file = f"sweep_{name}.png"
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        names.append(file)
    return names


def table1_markdown(df: pd.DataFrame) -> str:
    """Methods x regions (mean ± std over seeds), the paper's Table 1 layout."""
    part = df[(df["experiment"] == NAME) & (df["metric"] == "mse")]
    stats = part.groupby(["method", "group"], sort=False)["value"].agg(["mean", "std"])
    cell = stats.apply(
        lambda s: (
            f"{s['mean']:.4g} ± {s['std']:.2g}" if np.isfinite(s["std"]) else f"{s['mean']:.4g}"
        ),
        axis=1,
    )
    table = cell.unstack("group")
    groups = [g for g in dict.fromkeys(part["group"]) if g != "average"] + ["average"]
    table = table[groups].reindex([m for m in METHODS if m in table.index])
    n = part["seed"].nunique()
    return f"### Table 1 analog: test MSE (mean ± std over {n} seeds)\n\n" + markdown_table(
        table.reset_index()
    )


def run(
    *,
    data: str,
    out: Path,
    smoke: bool,
    seeds: int,
    command: str,
    no_sweeps: bool = False,
    **options,
) -> pd.DataFrame:
    """Table 1 analog and sweeps on ``data``; writes results, PNGs and the run header."""
    out = Path(out)
    panel, daily = load_panel(data)
    cfg = get_config(smoke)
    if daily and not smoke:
        cfg = dataclasses.replace(cfg, **DAILY)
    cfg = with_overrides(cfg, **{k: v for k, v in options.items() if k in OVERRIDES})
    panel = top_regions(panel, cfg.n_regions)
    write_run_header(out, command, dataclasses.asdict(cfg) | {"data": data, "seeds": seeds})
    dataset = parse_data_spec(data).name
    start = time.perf_counter()
    rows = table1(panel, cfg, dataset=dataset, seeds=seeds)
    logger.info("Table 1: %.0f s", time.perf_counter() - start)
    if not no_sweeps:
        rows += sweeps(panel, cfg, dataset=dataset)
    df = pd.DataFrame(
        rows, columns=["experiment", "dataset", "method", "group", "seed", "metric", "value"]
    )
    plots = plot_sweeps(df, out)
    extra = table1_markdown(df) + "\n\n" + "\n".join(f"![{p}]({p})" for p in plots)
    write_results(df, out, title=f"Sales CNN on {dataset}", extra_md=extra)
    return df


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic Table 1 analog (and sweeps unless smoke) as a Markdown section."""
    out = Path(out)
    cfg = get_config(smoke=True)
    if not smoke:
        cfg = dataclasses.replace(
            cfg, maps=8, hidden=64, epochs=5.0, finetune_epochs=5.0, n_regions=3
        )
    panel = top_regions(synthetic_panel(0, n_regions=3, n_items=20, n_periods=60)[0], cfg.n_regions)
    rows = table1(panel, cfg, dataset="synthetic", seeds=1)
    if not smoke:
        rows += sweeps(
            panel, dataclasses.replace(cfg, sweep_betas=(0.0, 0.05, 0.2)), dataset="synthetic"
        )
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        rows, columns=["experiment", "dataset", "method", "group", "seed", "metric", "value"]
    )
    plots = plot_sweeps(df, out)
    images = "\n".join(f"![{p}]({NAME}/{p})" for p in plots)
    return f"## Sales CNN (Zhao & Wang) on synthetic data\n\n{table1_markdown(df)}\n\n{images}\n"
