"""Sales CNN (Zhao & Wang) experiment config; paper defaults (section 4.4) unless noted."""

from __future__ import annotations

import dataclasses

from dmeta.sales_cnn.model import PAPER_ORDERS


@dataclasses.dataclass(frozen=True)
class SalesCNNConfig:
    """Sizes and hyper-parameters.

    ``length`` / ``horizon`` / ``beta`` are in panel periods (weeks for frat and
    synthetic, days for cainiao and completejourney: see ``DAILY``).
    """

    length: int = 26  # frame length T (paper: 84 days)
    horizon: int = 1  # target interval k (paper: 7 days = one week)
    n_test: int = 1  # last end points used as test frames (paper: 1)
    train_periods: int | None = 52  # training end points within ~1 year before the test
    n_regions: int = 5  # regions kept (largest by sales; paper: 5)
    maps: int = 128  # K per order
    hidden: int = 1024  # n of the dense feature layer
    orders: tuple[tuple[int, int], ...] = PAPER_ORDERS
    rate: float = 0.2
    dnn_hidden: int = 1024
    dnn_layers: int = 4
    beta: float = 0.02
    learning_rate: float = 2e-3  # Adamax default
    compute_dtype: str = "float32"  # or "bfloat16": mixed precision for the CNNs
    data_parallel: bool = False  # minibatches (pooled) and regions over all visible devices
    batch_size: int = 128
    epochs: float = 10.0  # pretraining / per-region training
    finetune_epochs: float = 10.0  # transfer stage
    arima_lags: int = 2
    gbrt_estimators: int = 300
    sweep_horizons: tuple[int, ...] = (1, 2, 4, 8)
    sweep_lengths: tuple[int, ...] = (13, 26, 52)
    sweep_betas: tuple[float, ...] = (0.0, 0.02, 0.1, 0.2)
    sweep_seeds: int = 2  # seeds per sweep point (CNN+WD+TL only)


# Daily data use the paper's own sizes.
DAILY = dict(length=84, horizon=7, sweep_horizons=(1, 7, 14, 28), sweep_lengths=(28, 56, 84, 112))


def get_config(smoke: bool = False) -> SalesCNNConfig:
    """Paper-size config, or a tiny one that runs in seconds."""
    if not smoke:
        return SalesCNNConfig()
    return SalesCNNConfig(
        length=13,
        horizon=1,
        n_test=2,
        train_periods=20,
        n_regions=2,
        maps=4,
        hidden=16,
        dnn_hidden=16,
        dnn_layers=2,
        epochs=2.0,
        finetune_epochs=2.0,
        gbrt_estimators=20,
        sweep_horizons=(1, 2),
        sweep_lengths=(8, 13),
        sweep_betas=(0.0, 0.1),
        sweep_seeds=1,
    )
