"""C2M (Xue et al.): deep customer segmentation + integrated category / attribute demand mining.

Per seed one autoencoder is pretrained and shared by every deep method; each segmentation
goes through the same mining stage (``dmeta.c2m.protocol``).

* Table 1: Ours (joint, eq. 6-7) vs DEC, DeepCluster-style (DC), k-means++ on the pretrained
  latent (AE+KM), k-means on bag-of-categories (BoC-KM) and market segmentation trees (MST:
  logit leaves split on category shares), each fitted on the fit users and tuned on the
  held-out validation users: SC, CH (each in its own space, on the fit users, and
  ``SC_inliers`` / ``CH_inliers`` without Ours' outlier share), MPP (all users), and a Random
  segmentation's MPP as reference; on synthetic data also ARI, planted-pattern recall and
  logit coefficient error.
* Figures 2-3: alpha and beta sweeps. Table 2: source behaviours. Table 3: ablations
  (``protocol.extras`` / ``protocol.sweeps``, with Ours among ``--methods``).
* A case study per segment of Ours (first seed).

    dmeta run c2m --data userbehavior --seeds 5 --out experiments/results/c2m/userbehavior
    dmeta run c2m --data completejourney --seeds 5 --set data.max_events=100 \
        --set mining.pattern_behaviors=buy --set protocol.sources=false \
        --out experiments/results/c2m/completejourney

On sequence shards (``dmeta.outofcore.preprocess``), Ours alone, each of the processes
reading only its users (README "Scaling out"):

    dmeta run c2m --data sequences:work/sequences --methods Ours --out runs/c2m_shards \
        --coordinator HOST:PORT --num-processes 2 --process-id I
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.c2m import sharded
from dmeta.c2m.config import C2MConfig, get_config
from dmeta.c2m.protocol import METHODS, C2MRun, cells, prepare
from dmeta.data.spec import parse_data_spec
from dmeta.report import c2m as c2m_report
from dmeta.report import read_results
from dmeta.train.harness import finish, open_run, run_cells

__all__ = ["METHODS", "demo", "get_config", "run"]


def run(
    cfg: C2MConfig,
    *,
    data: str,
    out: Path,
    seeds: int,
    methods: tuple[str, ...],
    fresh: bool,
    command: str,
) -> pd.DataFrame:
    """Tables 1-3 analogs, sweeps and the case study on ``data``; writes the run folder.

    ``data`` ``sequences:DIR`` runs Ours on sequence shards instead, each process reading
    only its users (``dmeta.c2m.sharded``).
    """
    if parse_data_spec(data).name == sharded.SEQUENCES:
        return sharded.run(
            cfg, data=data, out=out, seeds=seeds, methods=methods, fresh=fresh, command=command
        )
    prep = prepare(data, cfg)
    out = open_run(out, cfg, data=data, seeds=seeds, methods=methods, command=command, fresh=fresh)
    protocol = C2MRun(prep, cfg, out)
    results = run_cells(out, cells(cfg, methods, seeds), protocol.run_cell)
    return finish(out, results)


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic Table 1 analog (+ Tables 2-3 and sweeps unless smoke) as a Markdown section."""
    cfg = get_config(smoke=True)
    if not smoke:
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, synthetic_users=240),
            train=dataclasses.replace(cfg.train, joint_epochs=4),
        )
    else:
        cfg = dataclasses.replace(
            cfg, protocol=dataclasses.replace(cfg.protocol, extras=False, sweeps=False)
        )
    out = Path(out)
    command = f"dmeta demo{' --smoke' if smoke else ''}"
    run(cfg, data="synthetic", out=out, seeds=1, methods=METHODS, fresh=True, command=command)
    results = read_results(out)
    tables = c2m_report.tables_markdown(results)
    case = c2m_report.case_study_markdown(out)
    images = c2m_report.sweep_images(results, prefix=f"{out.name}/")
    return f"## C2M (Xue et al.) on synthetic data\n\n{tables}\n\n{case}\n{images}\n"
