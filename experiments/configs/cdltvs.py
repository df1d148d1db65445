"""CDLtvS configs: the paper's sizes (``size="paper"``), a CPU-sized run and a smoke run."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CDLtvSConfig:
    """Every knob of a CDLtvS run (library functions get these as keyword arguments).

    Data: synthetic ``n_customers`` / ``n_periods`` / ``horizon``; transaction data
    ``period_days`` windows, ``tx_periods`` history windows, ``tx_horizon`` label windows,
    ``n_anchors`` anchors per customer, ``max_customers`` (None: all; else a seeded subset).
    Model (5.1.4): ``hidden`` h, ``align`` d, ``k`` experts, ``a`` experts per sample,
    ``tcn_levels``, ``lambdas`` (lambda_1..4), ``temperature`` of InfoNCE, ``margin`` eta.
    Fit: ``lr``, ``batch_size``, ``max_epochs``, ``patience``, ``drop_epoch`` /
    ``drop_factor`` of the lambda schedule. Protocol: ``sparsity`` levels P, ``sweep_k``
    (Figure 6) on the first ``sweep_seeds`` seeds, ``ablations`` on/off.
    """

    n_customers: int = 3000
    n_periods: int = 12
    horizon: int = 3
    period_days: int = 30
    tx_periods: int = 6
    tx_horizon: int = 1
    n_anchors: int = 6
    max_customers: int | None = 1200
    hidden: int = 32
    align: int = 20
    k: int = 4
    a: int = 1
    tcn_levels: int = 3
    lambdas: tuple[float, float, float, float] = (10.0, 20.0, 2.0, 1.0)
    temperature: float = 1.0
    margin: float = 0.1
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 7
    drop_epoch: int = 20
    drop_factor: float = 0.01
    data_parallel: bool = False  # split each batch of customers over all visible devices
    sparsity: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8)
    sweep_k: tuple[int, ...] = (1, 2, 4, 8)
    sweep_seeds: int = 2
    ablations: bool = True

    def arch(self) -> dict:
        """Keyword arguments of :func:`dmeta.ltv.train.fit_stage1` (model part)."""
        keys = ("hidden", "align", "k", "a", "tcn_levels", "lambdas", "temperature", "margin")
        return {key: getattr(self, key) for key in keys}

    def fit(self) -> dict:
        """Keyword arguments of :func:`dmeta.ltv.train.fit` (optimization part)."""
        keys = ("lr", "batch_size", "max_epochs", "patience", "drop_epoch", "drop_factor")
        return {key: getattr(self, key) for key in keys} | {"shard": self.data_parallel}


def get_config(smoke: bool = False, size: str = "cpu", data: str = "synthetic") -> CDLtvSConfig:
    """``size="paper"``: h = 128, d = 80 (5.1.4); ``"cpu"``: h = 32, d = 20 (same d/h ratio)
    so the full protocol fits the shared 2-core machine; ``smoke``: seconds end to end.
    ``data="cdnow"`` (single domain): the classic BG/NBD split (39 weekly history windows, the
    next 39 weeks as label, one anchor), every customer (a subset at smoke size), P = 0 only, no
    ablations or k sweep (they are about stage 2)."""
    if size not in ("paper", "cpu"):
        raise ValueError(f"size must be 'paper' or 'cpu', got {size!r}")
    cfg = CDLtvSConfig()
    if size == "paper":
        cfg = dataclasses.replace(cfg, hidden=128, align=80, max_customers=None)
    if smoke:
        cfg = dataclasses.replace(
            cfg,
            n_customers=240,
            n_periods=6,
            horizon=2,
            max_customers=150,
            n_anchors=2,
            hidden=8,
            align=4,
            tcn_levels=2,
            batch_size=64,
            max_epochs=3,
            patience=1,
            drop_epoch=1,
            sparsity=(0.0, 0.5),
            sweep_k=(2, 4),
            sweep_seeds=1,
        )
    if data == "cdnow":
        cfg = dataclasses.replace(
            cfg,
            period_days=7,
            tx_periods=39,
            tx_horizon=39,
            n_anchors=1,
            max_customers=cfg.max_customers if smoke else None,
            sparsity=(0.0,),
            ablations=False,
            sweep_seeds=0,
        )
    return cfg
