"""RMLDP: relation-aware meta-learning for data-poor segment demand (Tables 2-5, Figures 6-7).

Cells: every method x seed on the main |T_c| (per-segment scores in results.csv as groups
``seg:<id>``), and with ``protocol.sweep`` the full variant's seed 0 at each |T_c| of
``protocol.sweep_seq_len`` (setting ``seq_len=<n>``). The protocol, tuning and scoring
live in ``dmeta.rmldp.protocol``; ``dmeta report`` renders the run folder.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pandas as pd

from dmeta.report.tables import markdown_table
from dmeta.rmldp.config import RMLDPConfig, get_config
from dmeta.rmldp.protocol import (
    METHODS,
    Context,
    context,
    full_variant,
    load_data,
    run_cell,
    runnable,
    targets,
)
from dmeta.train.harness import Cell, finish, open_run, run_cells, write_atomic

__all__ = ["METHODS", "demo", "get_config", "run"]

REPRESENTATIONS = "representations.csv"


def cells(cfg: RMLDPConfig, methods: tuple[str, ...], seeds: int) -> list[Cell]:
    """Main cells (method-major), then the |T_c| sweep of the full variant (seed 0)."""
    out = [Cell(m, s) for m in methods for s in range(seeds)]
    if cfg.protocol.sweep and {"RMLDP", "RMLDP-g"} & set(methods):
        full = full_variant(methods)
        out += [Cell(full, 0, f"seq_len={n}") for n in cfg.protocol.sweep_seq_len]
    return out


def write_protocol(out: Path, ctx: Context) -> None:
    """``protocol.csv`` (segments per role) and ``targets.csv`` (target segment, group)."""
    counts = pd.DataFrame(list(ctx.prep.counts.items()), columns=["role", "segments"])
    write_atomic(out / "protocol.csv", counts.to_csv(index=False))
    write_atomic(out / "targets.csv", targets(ctx.prep).to_csv(index=False))


def run(
    cfg: RMLDPConfig,
    *,
    data: str,
    out: Path,
    seeds: int,
    methods: tuple[str, ...],
    fresh: bool,
    command: str,
) -> pd.DataFrame:
    """The whole protocol; the run folder gets results.csv/.md, protocol.csv, targets.csv,
    representations.csv and the PNGs (``dmeta.report.rmldp``)."""
    dataset = load_data(data, cfg)
    main = context(dataset, cfg, seq_len=cfg.protocol.seq_len)
    methods = runnable(methods, main.prep)
    out = open_run(out, cfg, data=data, seeds=seeds, methods=methods, command=command,
                   fresh=fresh, outputs=(REPRESENTATIONS,))  # fmt: skip
    main = dataclasses.replace(main, out=out)
    write_protocol(out, main)
    full = full_variant(methods)

    @functools.cache
    def at(seq_len: int) -> Context:
        if seq_len == cfg.protocol.seq_len:
            return main
        ctx = context(dataset, cfg, seq_len=seq_len)
        return dataclasses.replace(ctx, out=out, setting=f"seq_len={seq_len}")

    def setting(name: str) -> Context:
        # the sweep point at the main |T_c| shares the main context (and its fitted models)
        return main if name == "main" else at(int(name.removeprefix("seq_len=")))

    def one(cell: Cell) -> list[dict]:
        represent = cell.setting == "main" and cell.seed == 0 and cell.method == full
        rows, reps = run_cell(
            setting(cell.setting), cell, dataset=dataset.name, represent=represent
        )
        if reps is not None:
            write_atomic(out / REPRESENTATIONS, reps.to_csv(index=False))
        return rows

    return finish(out, run_cells(out, cells(cfg, methods, seeds), one))


DEMO_METHODS = ("XGBoost", "GRU+MPFN", "Fine-tune", "MAML", "RMLDP")


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic RMLDP vs baselines (one seed) and the map of segment representations."""
    cfg = get_config(smoke=smoke)
    if not smoke:
        r = dataclasses.replace
        cfg = r(
            cfg,
            data=r(cfg.data, n_segments=40),
            train=r(cfg.train, meta_steps=150),
            tuning=r(cfg.tuning, neural=r(cfg.tuning.neural, train_steps=(300,))),
        )
    cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, sweep=False))
    results = run(
        cfg, data="synthetic", out=Path(out), seeds=1, methods=DEMO_METHODS, fresh=True,
        command=f"dmeta demo{' --smoke' if smoke else ''}",
    )  # fmt: skip
    table = results[(results["group"] == "all") & (results["metric"] == "mape")]
    sil = results.loc[results["metric"] == "silhouette", "value"].iloc[0]
    targets_n = pd.read_csv(Path(out) / "targets.csv").shape[0]
    return (
        "## RMLDP: relation-aware meta-learning for segment demand\n\n"
        f"Synthetic clustered demand, {targets_n} target segments, one seed"
        f"{' (smoke size)' if smoke else ''}; MAPE on target query sets:\n\n"
        + markdown_table(table[["method", "value"]].rename(columns={"value": "MAPE"}))
        + f"\n![segment map](rmldp/rmldp_segment_map.png)\n\nSilhouette of q by true cluster: {sil}\n"
    )
