"""From a panel to per-region forecasts of every method in the paper's Table 1.

``prepare`` cuts train/test Data Frames (section 5.2), keeps the (region, item)
series that sold anything in the training window, z-scores inputs and targets
and stacks the samples per region. ``forecast_all`` trains the networks
(CNN, CNN+WD, CNN+WD+TL, Single-CNN, DNN) and the baselines (ARIMA, FE+GBRT,
naive) and returns test forecasts per region.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmeta.baselines.sales_cnn_baselines import (
    SalesDNN,
    arima_forecast,
    fe_features,
    fit_predict_gbrt,
    persistence_forecast,
)
from dmeta.sales_cnn.frames import SalesPanel, build_frames, split_ends
from dmeta.sales_cnn.model import PAPER_ORDERS, SalesCNN
from dmeta.sales_cnn.train import (
    Samples,
    Scaler,
    broadcast_params,
    fit,
    fit_regions,
    fit_scaler,
    predict_regions,
    sample_weights,
    split_model,
    stack_params,
)

log = logging.getLogger(__name__)

METHODS = (
    "ARIMA",
    "FE+GBRT",
    "DNN",
    "CNN",
    "CNN+WD",
    "CNN+WD+TL",
    "Single-CNN",
    "Naive",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """Region-stacked train and test samples of one panel.

    Attributes:
      train: Samples [R, N, 4, D, T] z-scored, ``w`` ones (set per method).
      train_ends: i32[R, N] frame end point of each training sample.
      train_raw: f32[R, N, 4, D, T] unscaled frames (for FE+GBRT).
      train_y: f32[R, N] raw targets.
      test_x: f32[R, Q, 4, D, T] z-scored test frames; test_raw the unscaled ones.
      test_y: f32[R, Q] raw targets; test_n: i32[R] real test rows per region.
      series: f32[R, I_max, L] sales of each region's kept items (ARIMA, naive);
        test row ``q`` is item ``q // E_test`` at end ``test_ends[q % E_test]``.
      test_ends: i32[E_test] test frame end points.
      scaler: the z-score statistics; sp, horizon: for the weights (eq. 18).
      regions: region names.
    """

    train: Samples
    train_ends: np.ndarray
    train_raw: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_raw: np.ndarray
    test_y: np.ndarray
    test_n: np.ndarray
    series: np.ndarray
    test_ends: np.ndarray
    scaler: Scaler
    sp: int
    horizon: int
    regions: tuple[str, ...]


def _pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    n_max = max(len(a) for a in arrays)
    return np.stack(
        [np.concatenate([a, np.zeros((n_max - len(a), *a.shape[1:]), a.dtype)]) for a in arrays]
    )


def prepare(
    panel: SalesPanel,
    *,
    length: int,
    horizon: int,
    n_test: int = 1,
    train_periods: int | None = None,
) -> Prepared:
    """Train/test Data Frames per region.

    Args:
      panel: the sales panel.
      length: frame length ``T``; horizon: target interval ``k``.
      n_test: number of last end points used as test frames (paper: 1).
      train_periods: keep training end points within this many periods before the
        test interval (paper: about one year); None keeps all.
    """
    split = split_ends(len(panel.dates), length=length, horizon=horizon, n_test=n_test)
    train_ends = split.train
    if train_periods is not None:
        train_ends = train_ends[train_ends >= split.sp - horizon - train_periods]
    args = (panel.x, panel.brand, panel.category)
    opts = dict(length=length, horizon=horizon, target=panel.target)
    frames, y = (np.asarray(a) for a in build_frames(*args, jnp.asarray(train_ends), **opts))
    test_frames, test_y = (
        np.asarray(a) for a in build_frames(*args, jnp.asarray(split.test), **opts)
    )
    first = int(train_ends[0]) - length + 1
    active = panel.sales[:, :, first : split.sp].sum(-1) > 0  # [R, I]
    scaler = fit_scaler(frames[active], y[active])
    n_ends, n_tests = len(train_ends), len(split.test)
    per_region = [np.flatnonzero(active[r]) for r in range(len(panel.regions))]
    d, t = frames.shape[-2:]
    raw = _pad_stack([frames[r, items].reshape(-1, 4, d, t) for r, items in enumerate(per_region)])
    ys = _pad_stack([y[r, items].reshape(-1) for r, items in enumerate(per_region)])
    ends = _pad_stack([np.tile(train_ends, len(items)) for items in per_region])
    test_raw = _pad_stack(
        [test_frames[r, items].reshape(-1, 4, d, t) for r, items in enumerate(per_region)]
    )
    n = np.array([len(items) * n_ends for items in per_region], np.int32)
    train = Samples(
        x=scaler.x(jnp.asarray(raw)),
        y=scaler.y(jnp.asarray(ys)),
        w=jnp.ones(ys.shape, jnp.float32),
        n=jnp.asarray(n),
    )
    return Prepared(
        train=train,
        train_ends=ends,
        train_raw=raw,
        train_y=ys,
        test_x=np.asarray(scaler.x(jnp.asarray(test_raw))),
        test_raw=test_raw,
        test_y=_pad_stack([test_y[r, items].reshape(-1) for r, items in enumerate(per_region)]),
        test_n=np.array([len(items) * n_tests for items in per_region], np.int32),
        series=_pad_stack([panel.sales[r, items] for r, items in enumerate(per_region)]),
        test_ends=split.test,
        scaler=scaler,
        sp=split.sp,
        horizon=horizon,
        regions=panel.regions,
    )


def weighted(data: Prepared, beta: float) -> Samples:
    """Training samples with the weights of eq. 18 (``beta = 0``: all ones)."""
    w = sample_weights(data.train_ends, sp=data.sp, horizon=data.horizon, beta=beta)
    return dataclasses.replace(data.train, w=w)


def pooled(samples: Samples) -> Samples:
    """All regions' real rows as one sample set (the paper's D = union of D_r)."""
    n = np.asarray(samples.n)
    take = lambda a: jnp.concatenate([a[r, : n[r]] for r in range(len(n))])  # noqa: E731
    return Samples(x=take(samples.x), y=take(samples.y), w=take(samples.w), n=jnp.asarray(n.sum()))


def _steps(epochs: float, n: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n / batch_size))


def forecast_networks(
    data: Prepared,
    *,
    seed: int,
    methods: tuple[str, ...] = ("DNN", "CNN", "CNN+WD", "CNN+WD+TL", "Single-CNN"),
    maps: int = 128,
    hidden: int = 1024,
    orders: tuple[tuple[int, int], ...] = PAPER_ORDERS,
    rate: float = 0.2,
    dnn_hidden: int = 1024,
    dnn_layers: int = 4,
    beta: float = 0.02,
    learning_rate: float = 2e-3,
    batch_size: int = 128,
    epochs: float = 10.0,
    finetune_epochs: float = 10.0,
    compute_dtype: str = "float32",
    shard: bool = False,
) -> dict[str, np.ndarray]:
    """Trains the networks and returns test forecasts f32[R, Q] (raw sales units).

    Per-region methods (CNN, CNN+WD, DNN) train one model per region from its own
    initialisation, all regions in one vmapped program for ``epochs``;
    Single-CNN trains one model on the pooled samples; CNN+WD+TL pretrains on the
    pooled weighted samples for ``epochs`` and fine-tunes per region (vmapped) for
    ``finetune_epochs``. ``compute_dtype`` (``"float32"`` or ``"bfloat16"``) is the CNNs'
    compute dtype (``SalesCNN``'s ``dtype``; the DNN stays float32). ``shard=True`` runs
    on all visible devices (``dmeta.sales_cnn.train``: pooled minibatches split, regions
    split in the per-region programs; the batch size and R must divide by the device count).
    """
    n_regions, _, _, d, t = data.train.x.shape
    key = jax.random.key(seed)
    opts = dict(learning_rate=learning_rate, batch_size=batch_size, shard=shard)
    region_opts = dict(opts, shard=shard and n_regions % jax.device_count() == 0)
    if shard and not region_opts["shard"]:
        log.warning(
            "%d regions do not split evenly over %d devices: the per-region programs run "
            "unsharded (pooled training stays sharded)",
            n_regions,
            jax.device_count(),
        )
    region_steps = _steps(epochs, int(np.max(data.train.n)), batch_size)
    pooled_steps = _steps(epochs, int(np.sum(data.train.n)), batch_size)
    test_x = jnp.asarray(data.test_x)

    def cnn(s):
        arch = dict(orders=orders, maps=maps, hidden=hidden, rate=rate, dtype=compute_dtype)
        return SalesCNN(d, t, **arch, rngs=nnx.Rngs(s))

    def per_region_inits(make):
        models = [split_model(make(seed * 1000 + r)) for r in range(n_regions)]
        return models[0][0], stack_params([p for _, p in models])

    def predict(graphdef, params_r):
        return np.asarray(data.scaler.inverse_y(predict_regions(graphdef, params_r, test_x)))

    out = {}
    for method in methods:
        key, k_fit, k_tune = jax.random.split(key, 3)
        if method in ("CNN", "CNN+WD", "DNN"):
            beta_m = beta if method == "CNN+WD" else 0.0
            make = cnn
            if method == "DNN":
                make = lambda s: SalesDNN(  # noqa: E731
                    4 * d * t, hidden=dnn_hidden, layers=dnn_layers, rate=rate, rngs=nnx.Rngs(s)
                )
            graphdef, params = per_region_inits(make)
            params, _ = fit_regions(
                graphdef, params, weighted(data, beta_m), k_fit, n_steps=region_steps, **region_opts
            )
            out[method] = predict(graphdef, params)
        elif method in ("CNN+WD+TL", "Single-CNN"):
            transfer = method == "CNN+WD+TL"
            graphdef, params = split_model(cnn(seed * 1000 + 999))
            samples = weighted(data, beta if transfer else 0.0)
            params, _ = fit(graphdef, params, pooled(samples), k_fit, n_steps=pooled_steps, **opts)
            params = broadcast_params(params, n_regions)
            if transfer:
                tune_steps = _steps(finetune_epochs, int(np.max(data.train.n)), batch_size)
                params, _ = fit_regions(
                    graphdef, params, samples, k_tune, n_steps=tune_steps, **region_opts
                )
            out[method] = predict(graphdef, params)
        else:
            raise ValueError(f"unknown network method {method!r}")
    return out


def forecast_baselines(
    data: Prepared,
    *,
    seed: int,
    methods: tuple[str, ...] = ("ARIMA", "FE+GBRT", "Naive"),
    arima_lags: int = 2,
    gbrt_estimators: int = 300,
) -> dict[str, np.ndarray]:
    """ARIMA, FE+GBRT (one model on the pooled training samples) and naive forecasts f[R, Q]."""
    shape = data.test_y.shape
    out = {}
    series = data.series.reshape(-1, data.series.shape[-1])
    n_rows = data.series.shape[1] * len(data.test_ends)

    def by_region(pred):  # f[R * I_max, E] -> f[R, Q] in the test row order
        pred = pred.reshape(len(data.regions), n_rows)
        return np.pad(pred, ((0, 0), (0, shape[1] - n_rows)))

    if "ARIMA" in methods:
        pred = arima_forecast(series, data.test_ends, horizon=data.horizon, lags=arima_lags)
        out["ARIMA"] = by_region(pred)
    if "Naive" in methods:
        out["Naive"] = by_region(persistence_forecast(series, data.test_ends, horizon=data.horizon))
    if "FE+GBRT" in methods:
        n = data.train.n
        x_train = np.concatenate([fe_features(data.train_raw[r, : n[r]]) for r in range(len(n))])
        y_train = np.concatenate([data.train_y[r, : n[r]] for r in range(len(n))])
        x_test = fe_features(data.test_raw.reshape(-1, *data.test_raw.shape[2:]))
        pred = fit_predict_gbrt(x_train, y_train, x_test, seed=seed, n_estimators=gbrt_estimators)
        out["FE+GBRT"] = pred.reshape(shape)
    return out


def region_mse(data: Prepared, pred: np.ndarray) -> np.ndarray:
    """f64[R] test MSE per region over its real test rows."""
    mask = np.arange(data.test_y.shape[1])[None, :] < data.test_n[:, None]
    err = np.where(mask, (np.asarray(pred, np.float64) - data.test_y) ** 2, 0.0)
    return err.sum(1) / data.test_n
