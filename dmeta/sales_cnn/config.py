"""Sales CNN (Zhao & Wang) experiment config; paper defaults (section 4.4) unless noted.

Sections: ``data`` (frames and the train / validation / test split in panel periods, with
the paper's daily sizes, and the regions and items kept), ``weekly`` (the week-scale sizes
and orders that replace the daily ones on weekly panels: frat, synthetic), ``model`` (the
CNN, ``SalesCNN(d, t, **cfg.model.kwargs())``), ``dnn`` (the DNN baseline), ``train``
(Adamax, weight decay, step budgets, early stopping), ``baselines`` (ARIMA, FE+GBRT),
``protocol`` (sweeps) and ``tuning``.

Sizes: ``size="paper"`` is the paper's network (K = 128 maps, n = 1024, DNN 1024 wide,
10 + 10 epochs); ``size="cpu"`` (the CLI default) narrows the networks (K = 32, n = 256,
DNN 256) for the 2-core machine; ``smoke`` is seconds.

Equal tuning: every Table 1 method gets ``tuning.trials`` points of its grid (the first
point is today's setting, so ``trials = 1`` runs the defaults alone at no extra cost),
each scored by the average validation MSE (the reported metric) on the last ``n_test``
end points before the test interval; ``--set tuning.trials=9`` gives every method 9
points (all of a smaller grid; Naive has none). Networks early-stop on the ``n_val`` end
points just before those they are scored on, which they do not train on (``n_val = 0``:
no early stopping, every step run, the last state kept).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar, Literal

from dmeta.sales_cnn.model import PAPER_ORDERS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Frames and the train/test split in panel periods (the paper's daily sizes), and the
    panel's regions and items."""

    length: int = 84  # frame length T (paper: 84 days)
    horizon: int = 7  # target interval k (paper: 7 days)
    n_test: int = 1  # test end points per region (paper: 1, the last one)
    n_val: int = 7  # last training end points held out for early stopping (0: none)
    train_periods: int | None = 365  # training end points this close to the test (~1 year)
    n_regions: int = 5  # regions kept (largest by sales; paper: 5)
    n_items: int | None = 100  # items kept (most sold there; completejourney: most baskets)
    period_days: float | None = None  # days per period for eq. 18 (None: the dates' step)
    # the Data Frames' brand, category and region rows: "totals" over every product of the
    # regions (completejourney: all products of the stores, also those not among the
    # n_items; the other data hold every item, so there it is the panel's own items) or
    # "selected", the sums over the panel's items (runs saved before this field)
    group_rows: Literal["totals", "selected"] = "totals"


@dataclasses.dataclass(frozen=True)
class WeeklyConfig:
    """Week-scale sizes used instead of the daily ones on weekly panels (``enabled``).

    The paper's orders (7,7), (4,4), (3,3) pool a week, a month and a season of days; on
    weekly periods the first pools 7 weeks and a 26-week frame keeps 2 positions, so weekly
    panels use the month and season orders in weeks, (4,4) and (3,3).
    """

    enabled: bool = True
    length: int = 26  # frame length T in weeks
    horizon: int = 1  # target interval k: one week (the paper's 7 days)
    n_val: int = 1
    train_periods: int | None = 52
    filters: tuple[int, ...] = (4, 3)  # filter size m per order, in weeks
    pools: tuple[int, ...] = (4, 3)  # pooling length k per order
    sweep_horizons: tuple[int, ...] = (1, 2, 4, 8)
    sweep_lengths: tuple[int, ...] = (13, 26, 52)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``SalesCNN`` architecture (``SalesCNN(d, t, **cfg.model.kwargs())``)."""

    maps: int = 128  # K per order
    hidden: int = 1024  # n of the dense feature layer
    filters: tuple[int, ...] = tuple(m for m, _ in PAPER_ORDERS)  # filter size m per order
    pools: tuple[int, ...] = tuple(k for _, k in PAPER_ORDERS)  # pooling length k per order
    rate: float = 0.2  # dropout (the DNN's too)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype (mixed precision)

    def kwargs(self) -> dict:
        """``SalesCNN`` keyword arguments (``orders`` from ``filters`` and ``pools``)."""
        fields = dataclasses.asdict(self)
        orders = tuple(zip(fields.pop("filters"), fields.pop("pools"), strict=True))
        return fields | {"orders": orders}


@dataclasses.dataclass(frozen=True)
class DNNConfig:
    """``SalesDNN`` baseline (its dropout rate is ``model.rate``; the DNN stays float32)."""

    hidden: int = 1024
    layers: int = 4


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Adamax over minibatches, sample weight decay (eq. 18), transfer; every stage early-stops
    on the validation frames (``data.n_val``) and keeps its best state.

    ``schedule="matched"`` (the main table) gives every network CNN+WD+TL's step budget
    (``epochs`` over the pooled samples + ``finetune_epochs`` over a region's), so transfer
    is not confounded with training length; ``"paper"`` keeps the paper's epochs per stage
    (CNN, CNN+WD, DNN: ``epochs`` over a region's samples; Single-CNN: over the pooled).
    """

    learning_rate: float = 2e-3  # Adamax default
    batch_size: int = 128
    epochs: float = 10.0  # pretraining / per-region training
    finetune_epochs: float = 10.0  # transfer stage
    beta: float = 0.02  # weight decay per DAY (eq. 18; CNN+WD, CNN+WD+TL): 0.14 per week
    schedule: Literal["matched", "paper"] = "matched"  # steps per network (step_budgets)
    eval_every: int = 50  # steps between validation losses (and jitted chunks' length bound)
    patience: int | None = 10  # evaluations without a lower validation loss before stopping
    # per-region networks: each region's own best state and patience ("per_region", the
    # paper's individually built models) or one shared step on the regions' mean ("shared")
    region_stopping: Literal["per_region", "shared"] = "per_region"
    data_parallel: bool = False  # minibatches (pooled) and regions over all visible devices


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """ARIMA (AR(p) with a constant, least squares) and FE+GBRT (xgboost)."""

    arima_lags: int = 2
    gbrt_estimators: int = 300
    gbrt_max_depth: int = 6
    gbrt_learning_rate: float = 0.05
    gbrt_jobs: int = 2


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Figures 5-7: CNN+WD+TL across k, T and beta."""

    sweeps: bool = True
    sweep_horizons: tuple[int, ...] = (1, 7, 14, 28)  # days (paper Figure 5)
    sweep_lengths: tuple[int, ...] = (28, 56, 84, 112)  # days (paper Figure 6)
    sweep_betas: tuple[float, ...] = (0.0, 0.005, 0.02, 0.05)  # per day (paper Figure 7)
    sweep_seeds: int = 3  # seeds per sweep point


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """Equal tuning of the Table 1 methods (see the module docstring).

    Each grid is the configured value first, then these alternatives.

    Attributes (besides the grids):
      trials: grid points per method (1: the configured values, no validation fits).
      per_seed: tune every (method, seed) on its own; False: the first seed of a method
        tunes and its other seeds reuse the choice (``dmeta.train.harness.shared_choice``),
        the same for every method.
    """

    trials: int = 1
    per_seed: bool = True
    arima_lags: tuple[int, ...] = (1, 3)  # after baselines.arima_lags
    gbrt_max_depth: tuple[int, ...] = (3, 9)  # after baselines.gbrt_max_depth
    gbrt_learning_rate: tuple[float, ...] = (0.1, 0.02)  # after baselines.gbrt_learning_rate
    learning_rate: tuple[float, ...] = (1e-3, 5e-3)  # every network, after train's
    rate: tuple[float, ...] = (0.0, 0.4)  # every network's dropout, after model.rate


@dataclasses.dataclass(frozen=True)
class SalesCNNConfig:
    """The whole Sales CNN experiment. ``BEFORE_ADDED``: what runs saved before a field
    existed did, where its default is a new behaviour (``dmeta.train.harness``)."""

    BEFORE_ADDED: ClassVar[dict[str, str]] = {
        "train.region_stopping": "shared",
        "data.group_rows": "selected",
    }

    data: DataConfig = DataConfig()
    weekly: WeeklyConfig = WeeklyConfig()
    model: ModelConfig = ModelConfig()
    dnn: DNNConfig = DNNConfig()
    train: TrainConfig = TrainConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    tuning: TuningConfig = TuningConfig()


WEEKLY_FIELDS = {
    "data": ("length", "horizon", "n_val", "train_periods"),
    "model": ("filters", "pools"),
    "protocol": ("sweep_horizons", "sweep_lengths"),
}


def for_weekly(cfg: SalesCNNConfig) -> SalesCNNConfig:
    """``cfg`` with the ``weekly`` sizes and orders in place (when ``weekly.enabled``); a
    replaced field set away from its default is logged with the ``weekly`` field to set."""
    w = cfg.weekly
    if not w.enabled:
        return cfg
    sections = {}
    for section, names in WEEKLY_FIELDS.items():
        old = getattr(cfg, section)
        default = type(old)()
        for name in names:
            value = getattr(old, name)
            if value != getattr(default, name) and value != getattr(w, name):
                log.warning(
                    "weekly panel: %s.%s=%s is replaced by weekly.%s=%s (set that instead)",
                    section, name, value, name, getattr(w, name),
                )  # fmt: skip
        sections[section] = dataclasses.replace(old, **{n: getattr(w, n) for n in names})
    return dataclasses.replace(cfg, **sections)


def get_config(*, smoke: bool = False, size: str = "cpu") -> SalesCNNConfig:
    """``size="paper"``: the paper's network; ``"cpu"``: narrower networks for a 2-core
    machine; ``smoke``: seconds (on top of the CPU size)."""
    if size not in ("paper", "cpu"):
        raise ValueError(f"size={size!r}; use 'paper' or 'cpu'")
    cfg = SalesCNNConfig()
    if size == "cpu" or smoke:
        cfg = dataclasses.replace(
            cfg, model=ModelConfig(maps=32, hidden=256), dnn=DNNConfig(hidden=256)
        )
    if not smoke:
        return cfg
    return SalesCNNConfig(
        data=DataConfig(
            length=28, horizon=7, n_test=2, n_val=2, train_periods=60, n_regions=2, n_items=30
        ),  # fmt: skip
        weekly=WeeklyConfig(
            length=13, n_val=2, train_periods=20, sweep_horizons=(1, 2), sweep_lengths=(8, 13)
        ),  # fmt: skip
        model=ModelConfig(maps=4, hidden=16),
        dnn=DNNConfig(hidden=16, layers=2),
        train=TrainConfig(epochs=2.0, finetune_epochs=2.0, eval_every=3, patience=2),
        baselines=BaselinesConfig(gbrt_estimators=20),
        protocol=ProtocolConfig(
            sweep_horizons=(1, 7), sweep_lengths=(28, 56), sweep_betas=(0.0, 0.02), sweep_seeds=1
        ),
    )
