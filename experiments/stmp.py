"""STMP: spatio-temporal meta-learning for festival purchase prediction vs baselines.

Trains STMP (amortized region / date-type latents, jump-LSTM, alternating views) and
its ablations, and the baselines (same-date-type historical average, XGBoost on lags,
LSTM, an AR(p) by least squares, MAML) on one panel; scores one-step-ahead forecasts of the test
period on regular and festival days, with all festival training data and with one week
of it (``protocol.one_week``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dmeta.config import override
from dmeta.report.stmp import FORECASTS
from dmeta.report.tables import markdown_table
from dmeta.stmp import protocol as P
from dmeta.stmp.config import STMPConfig, get_config
from dmeta.train import harness

METHODS = P.METHODS
DEMO_METHODS = ("STMP", "HistAvg", "XGBoost")


def run(
    cfg: STMPConfig,
    *,
    data: str,
    out: Path,
    seeds: int,
    methods: tuple[str, ...],
    fresh: bool,
    command: str,
) -> pd.DataFrame:
    """Runs the protocol; writes results.csv/md, command.txt, config.json, the festival plot."""
    dataset, panel = P.load_panel(data, cfg.data)
    out = harness.open_run(out, cfg, data=data, seeds=seeds, methods=methods, command=command,
                           fresh=fresh, outputs=(FORECASTS,))  # fmt: skip
    results = harness.run_cells(
        out,
        P.cells(cfg, methods, seeds),
        lambda cell: P.run_cell(cell, panel, dataset, cfg, out),
    )
    return harness.finish(out, results)


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic panel; STMP vs the same-date-type average and XGBoost."""
    sizes = [] if smoke else ["data.synthetic_regions=12", "train.n_steps=1000"]
    cfg = override(get_config(smoke=smoke), [*sizes, "protocol.one_week=false"])
    results = run(cfg, data="synthetic", out=Path(out), seeds=1, methods=DEMO_METHODS,
                  fresh=True, command="dmeta demo")  # fmt: skip
    table = results[~results.metric.str.startswith("hp:")].pivot_table(
        index=["group", "method"], columns="metric", values="value"
    )
    return (
        "## STMP (synthetic festival panel)\n\n"
        "One-step forecasts of a synthetic region x day panel whose festival uplift is set by "
        "region attributes; metrics in original units.\n\n"
        f"{markdown_table(table.reset_index())}\n\n![festivals](stmp/stmp_festivals.png)\n"
    )
