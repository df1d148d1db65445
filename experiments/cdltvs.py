"""CDLtvS: cross-domain customer LTV with the Expert Mask Network (Table 1, Figures 4-7).

Protocol (5.1, :mod:`dmeta.ltv.protocol`): a share P of customers loses its target-domain
history (C_na); customers are split 7:2:1; every method predicts the target-domain LTV of
the test customers; NMAE, NRMSE and normalized Gini overall and for C_na / C_a. One cell per
(P, method, seed); with CDLtvS also its ablations (Figure 5) and the expert sweep (Figure 6).
Figure 7: predicted vs actual LTV coloured by expert, stage 1 and stage 2 (first P, seed 0).

Single-domain data (``--data cdnow``): LtvS (stage 1 only) and the single-domain baselines in
the classic CDNOW split; cross-domain methods and P > 0 do not apply and the results say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from dmeta.ltv.config import CDLtvSConfig, demo_config, get_config
from dmeta.ltv.protocol import METHODS, Protocol, load_data
from dmeta.report.cdltvs import demo_markdown, figures
from dmeta.train.harness import finish, open_run, run_cells

__all__ = ["METHODS", "demo", "get_config", "run"]

logger = logging.getLogger(__name__)

DEMO_METHODS = ("XGBoost-2stage", "PTUPCDR", "LtvS", "CDLtvS")


def run(
    cfg: CDLtvSConfig,
    *,
    data: str,
    out: Path,
    seeds: int,
    methods: tuple[str, ...],
    fresh: bool,
    command: str,
) -> pd.DataFrame:
    """Every cell of the protocol; writes the run folder (``cells/``, ``results.csv``,
    ``results.md``, figures and Figure 7's scatter file)."""
    name, dataset = load_data(data, cfg)
    logger.info("%s: %d samples, %d customers", name, dataset.n, len(set(dataset.customer)))
    out = open_run(out, cfg, data=data, seeds=seeds, methods=methods, command=command, fresh=fresh)
    protocol = Protocol(dataset, cfg, name, out)
    results = run_cells(out, protocol.cells(methods, seeds), protocol.run_cell)
    return finish(out, results)


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic P = 50%: LtvS vs CDLtvS vs two baselines (one seed), Figure 7 scatter."""
    cfg = demo_config(smoke=smoke)
    command = f"dmeta demo{' --smoke' if smoke else ''}"
    results = run(
        cfg, data="synthetic", out=out, seeds=1, methods=DEMO_METHODS, fresh=True, command=command
    )
    fig7 = [f for f in figures(Path(out), results) if f.startswith("fig7")]
    return (
        "## CDLtvS: cross-domain LTV with the Expert Mask Network\n\n"
        f"Synthetic two-domain customers ({cfg.data.n_customers}), half with their target "
        "history removed (C_na); target-domain LTV of the test customers, one seed.\n\n"
        + demo_markdown(results)
        + "".join(f"\n\n![predicted vs actual by expert](cdltvs/{f})" for f in fig7)
        + "\n"
    )
