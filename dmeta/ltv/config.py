"""Config of ``dmeta run cdltvs`` (CDLtvS, cross-domain customer LTV), as nested frozen dataclasses.

``dmeta config cdltvs`` prints every field; ``dmeta run cdltvs --set PATH=VALUE`` overrides
any of them (e.g. ``--set protocol.ablations=false --set data.transactions.max_customers=500``).
The former flags map to fields: ``--max-customers`` is ``data.<source>.max_customers``,
``--no-ablations`` is ``protocol.ablations=false``, ``--sweep-seeds`` is
``protocol.sweep_seeds``; ``--baselines-only`` is ``--methods`` without LtvS and CDLtvS.

Equal tuning: every method of Table 1 gets the same procedure (``dmeta.train.harness.tune``):
its grid is the value the config holds (the first point, today's setting) followed by the
alternatives in ``tuning``; ``tuning.trials`` points of it are scored by NMAE on the
validation customers and the lowest wins. ``trials = 1`` (the default) runs the configured
values alone, at no extra cost; ``--set tuning.trials=N`` gives every method N points (all of
a smaller grid; ARIMA and BG/NBD + GG have no hyperparameters, so one point).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Windows:
    """How a transaction log becomes samples (:func:`dmeta.ltv.data.from_transactions`).

    Attributes:
      period_days: window length in days.
      n_periods: L history windows.
      horizon: label = spend in the next ``horizon`` windows.
      n_anchors: anchors (samples) per customer.
      max_customers: a seeded subset of this many customers (None: all).
    """

    period_days: int = 30
    n_periods: int = 6
    horizon: int = 1
    n_anchors: int = 6
    max_customers: int | None = 1200

    def loader_kwargs(self) -> dict:
        """The window keyword arguments of the loaders (everything but ``max_customers``)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["max_customers"]
        return kwargs


CDNOW_WINDOWS = Windows(period_days=7, n_periods=39, horizon=39, n_anchors=1, max_customers=None)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The samples.

    Attributes:
      n_customers: customers of ``--data synthetic`` (one sample each).
      n_periods: history periods of ``--data synthetic``.
      horizon: label periods of ``--data synthetic``.
      transactions: windows of two-domain logs (``completejourney``, ``transactions``).
      cdnow: windows of ``--data cdnow`` (single domain): the classic BG/NBD split, 39 weekly
        history windows from 1997-01-01, the next 39 weeks as label, one anchor.
    """

    n_customers: int = 3000
    n_periods: int = 12
    horizon: int = 3
    transactions: Windows = Windows()
    cdnow: Windows = CDNOW_WINDOWS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """CDLtvS sizes and loss factors (5.1.4): the keyword arguments of
    :func:`dmeta.ltv.train.fit_stage1` (``hidden`` is also the neural baselines' size).

    Attributes:
      hidden: h.
      align: d.
      k: experts.
      a: experts per sample.
      tcn_levels: TCN blocks.
      portrait: LtvS's DeepFM portrait branch (False: the series alone reach ExMN, the
        diagnostic of why LtvS trails a plain TCN at P = 0; not a paper setting).
      lambdas: lambda_1..4 (eq. 12 and 17).
      temperature: InfoNCE temperature.
      margin: eta of L_AT.
    """

    hidden: int = 32
    align: int = 20
    k: int = 4
    a: int = 1
    tcn_levels: int = 3
    portrait: bool = True
    lambdas: tuple[float, float, float, float] = (10.0, 20.0, 2.0, 1.0)
    temperature: float = 1.0
    margin: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Adam with early stopping on validation MAE (:func:`dmeta.ltv.train.fit`), shared by
    LtvS, CDLtvS and the neural baselines.

    Attributes:
      lr: learning rate.
      batch_size: samples per step.
      max_epochs: epoch limit.
      patience: epochs without improvement before stopping (counted after the drop).
      drop_epoch: the lambdas drop to ``drop_factor`` times their value after this epoch.
      drop_factor: the factor.
      data_parallel: split each batch of customers over all visible devices.
    """

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 7
    drop_epoch: int = 20
    drop_factor: float = 0.01
    data_parallel: bool = False

    def fit_kwargs(self) -> dict:
        """Keyword arguments of :func:`dmeta.ltv.train.fit` (``data_parallel`` as ``shard``)."""
        kwargs = dataclasses.asdict(self)
        kwargs["shard"] = kwargs.pop("data_parallel")
        return kwargs


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """What runs (5.1).

    Attributes:
      sparsity: levels P of customers without target history (one setting each; single-domain
        data runs P = 0 alone).
      ablations: the w/o L_AP / L_AT / L_ExMN ablations (Figure 5).
      sweep_k: expert counts of Figure 6.
      sweep_seeds: the k sweep runs on seeds ``0..sweep_seeds-1``.
    """

    sparsity: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8)
    ablations: bool = True
    sweep_k: tuple[int, ...] = (1, 2, 4, 8)
    sweep_seeds: int = 2


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """Two-stage XGBoost (:func:`dmeta.ltv.baselines.two_stage_xgboost`), PTUPCDR's bridge
    (:func:`dmeta.ltv.baselines.ptupcdr`) and TSUR's settings (:func:`dmeta.ltv.tsur.tsur`,
    defaults from its reference code's ``config.json`` / ``trainer.py``); the neural
    baselines take ``model.hidden`` and ``train``.

    Attributes:
      xgb_estimators: trees of each stage.
      xgb_max_depth: tree depth.
      xgb_learning_rate: shrinkage.
      xgb_early_stopping: rounds without validation improvement before stopping.
      ptupcdr_meta_dim: hidden size of PTUPCDR's bridge decoder (its code's default).
      tsur_channels: wavelet filter banks of TSUR's temporal encoder (each a channel).
      tsur_levels: wavelet decomposition levels.
      tsur_filter_len: taps of each wavelet filter (even).
      tsur_neighbours: k of the customer kNN graph (the reference's faiss k = 11 counts
        the node itself).
      tsur_heads: attention heads of the GAT and of the decoder (must divide the hidden size).
      tsur_clusters: centroids of the cluster-alignment regularizer.
      tsur_cluster_dim: size of the centroids and of the two projections onto them.
      tsur_wavelet_weight: weight of the penalty keeping the wavelet matrices near their
        initialization.
      tsur_cluster_weight: weight of the cluster-alignment (JS divergence) loss.
    """

    xgb_estimators: int = 300
    xgb_max_depth: int = 4
    xgb_learning_rate: float = 0.05
    xgb_early_stopping: int = 20
    ptupcdr_meta_dim: int = 50
    tsur_channels: int = 50
    tsur_levels: int = 3
    tsur_filter_len: int = 10
    tsur_neighbours: int = 10
    tsur_heads: int = 4
    tsur_clusters: int = 300
    tsur_cluster_dim: int = 50
    tsur_wavelet_weight: float = 0.03
    tsur_cluster_weight: float = 0.01

    def tsur_kwargs(self) -> dict:
        """The ``tsur_*`` fields as keyword arguments of :func:`dmeta.ltv.tsur.tsur`."""
        fields = dataclasses.asdict(self).items()
        return {k.removeprefix("tsur_"): v for k, v in fields if k.startswith("tsur_")}


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """Equal tuning: the alternatives tried after each method's configured value.

    Attributes:
      trials: grid points per method (1: the configured values alone).
      per_seed: tune every (method, seed) on its own; False: the first seed of a method
        (per setting) tunes and its other seeds reuse the choice
        (``dmeta.train.harness.shared_choice``), the same for every method.
      lr: after ``train.lr`` (the neural methods, LtvS, CDLtvS and its variants).
      hidden: after ``model.hidden`` (the same methods; CDLtvS scales d with it).
      xgb_max_depth: after ``baselines.xgb_max_depth``.
      xgb_learning_rate: after ``baselines.xgb_learning_rate``.
    """

    trials: int = 1
    per_seed: bool = True
    lr: tuple[float, ...] = (3e-4, 3e-3)
    hidden: tuple[int, ...] = (16, 64)
    xgb_max_depth: tuple[int, ...] = (3, 6)
    xgb_learning_rate: tuple[float, ...] = (0.02, 0.1)


@dataclasses.dataclass(frozen=True)
class CDLtvSConfig:
    """One CDLtvS run: ``data``, ``model``, ``train``, ``protocol``, ``baselines``, ``tuning``."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    tuning: TuningConfig = TuningConfig()


def get_config(*, smoke: bool = False, size: str = "cpu") -> CDLtvSConfig:
    """The run's config.

    ``size="paper"``: h = 128, d = 80 (5.1.4), every customer of real data (Complete Journey:
    all 2,469 households) and the tuning's alternative sizes h/2 and 2h (64, 256); ``"cpu"``:
    h = 32, d = 20 (the same d/h ratio) and 1200 customers, so the full protocol fits the
    shared 2-core machine; ``smoke``: seconds end to end.

    Raises:
      ValueError: an unknown ``size``.
    """
    if size not in ("paper", "cpu"):
        raise ValueError(f"size must be 'paper' or 'cpu', got {size!r}")
    cfg = CDLtvSConfig()
    if size == "paper":
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, transactions=Windows(max_customers=None)),
            model=dataclasses.replace(cfg.model, hidden=128, align=80),
            tuning=dataclasses.replace(cfg.tuning, hidden=(64, 256)),
        )
    if not smoke:
        return cfg
    return dataclasses.replace(
        cfg,
        data=DataConfig(
            n_customers=240,
            n_periods=6,
            horizon=2,
            transactions=Windows(n_anchors=2, max_customers=150),
            cdnow=dataclasses.replace(CDNOW_WINDOWS, max_customers=150),
        ),
        model=dataclasses.replace(cfg.model, hidden=8, align=4, tcn_levels=2),
        train=TrainConfig(batch_size=64, max_epochs=3, patience=1, drop_epoch=1),
        protocol=ProtocolConfig(sparsity=(0.0, 0.5), sweep_k=(2, 4), sweep_seeds=1),
    )


def demo_config(*, smoke: bool) -> CDLtvSConfig:
    """``dmeta demo``: synthetic P = 50%, no ablations or k sweep; smoke sizes, or (without
    ``smoke``) 1500 customers, h = 16, d = 10 and up to 30 epochs."""
    cfg = get_config(smoke=True)
    protocol = ProtocolConfig(sparsity=(0.5,), ablations=False, sweep_k=(), sweep_seeds=0)
    cfg = dataclasses.replace(cfg, protocol=protocol)
    if smoke:
        return cfg
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, n_customers=1500),
        model=dataclasses.replace(cfg.model, hidden=16, align=10),
        train=dataclasses.replace(
            cfg.train, max_epochs=30, drop_epoch=10, patience=5, batch_size=256
        ),
    )
