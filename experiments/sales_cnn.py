"""Sales CNN over Data Frames (Zhao & Wang): Table 1 analog (MSE per region) and sweeps.

Methods: ARIMA, FE+GBRT, DNN, CNN, CNN+WD, CNN+WD+TL, Single-CNN (and a naive
last-interval reference). Sweeps of CNN+WD+TL (``protocol.sweeps``): MSE of the average
sales per period vs target interval length (Figure 5), MSE vs frame length (Figure 6) and
MSE vs beta (Figure 7); see ``dmeta.sales_cnn.protocol``.

Data: ``completejourney[:PATH]`` (main table: product x store x day), ``frat[:PATH]``
(weekly setting), ``synthetic`` (weekly), ``cainiao[:PATH]``, ``itemlog:DIR``
(``DIR/log.csv`` with ``item_id, region_id, ds, <indicators>`` where the first indicator
is the sales target, and ``DIR/attributes.csv`` with ``item_id, brand, category``).
Daily panels run with the paper's sizes and orders, weekly ones with ``weekly``'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.report import read_results
from dmeta.report import sales_cnn as sales_report
from dmeta.sales_cnn.config import SalesCNNConfig, get_config
from dmeta.sales_cnn.protocol import (
    METHODS,
    SalesRun,
    cells,
    load_panel,
    resolve,
    top_items,
    top_regions,
)
from dmeta.sales_cnn.synthetic import synthetic_panel
from dmeta.train.harness import finish, open_run, run_cells

__all__ = ["METHODS", "demo", "get_config", "run"]


def run(
    cfg: SalesCNNConfig,
    *,
    data: str,
    out: Path,
    seeds: int,
    methods: tuple[str, ...],
    fresh: bool,
    command: str,
) -> pd.DataFrame:
    """Table 1 analog and sweeps on ``data``; writes the run folder."""
    dataset, panel = load_panel(data, n_items=cfg.data.n_items, n_regions=cfg.data.n_regions)
    cfg = resolve(cfg, panel)
    return _run(
        cfg,
        dataset,
        panel,
        out=out,
        seeds=seeds,
        methods=methods,
        fresh=fresh,
        command=command,
        data=data,
    )


def _run(cfg, dataset, panel, *, out, seeds, methods, fresh, command, data) -> pd.DataFrame:
    """``run`` on a loaded panel (its config already resolved for the data)."""
    panel = top_items(top_regions(panel, cfg.data.n_regions), cfg.data.n_items)
    out = open_run(out, cfg, data=data, seeds=seeds, methods=methods, command=command, fresh=fresh)
    protocol = SalesRun(dataset, panel, cfg, out)
    return finish(out, run_cells(out, cells(cfg, methods, seeds), protocol.run_cell))


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic Table 1 analog (and sweeps unless smoke) as a Markdown section."""
    cfg = get_config(smoke=True)
    if smoke:
        cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, sweeps=False))
    else:
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, n_regions=3),
            model=dataclasses.replace(cfg.model, maps=8, hidden=64),
            train=dataclasses.replace(cfg.train, epochs=5.0, finetune_epochs=5.0),
            protocol=dataclasses.replace(cfg.protocol, sweep_betas=(0.0, 0.02, 0.05)),
        )
    panel = synthetic_panel(0, n_regions=3, n_items=20, n_periods=60)[0]
    out = Path(out)
    command = f"dmeta demo{' --smoke' if smoke else ''}"
    _run(
        resolve(cfg, panel),
        "synthetic",
        panel,
        out=out,
        seeds=1,
        methods=METHODS,
        fresh=True,
        command=command,
        data="synthetic",
    )
    results = read_results(out)
    images = sales_report.sweep_images(results, prefix=f"{out.name}/")
    table = sales_report.table1_markdown(results)
    return f"## Sales CNN (Zhao & Wang) on synthetic data\n\n{table}\n\n{images}\n"
