"""Baselines of the sales CNN paper (Zhao & Wang, section 5.2.1): ARIMA, FE+GBRT, DNN.

* ARIMA (least-squares AR(p) with a constant) on each item's own sales series, forecasting the next
  ``k`` periods and summing them.
* FE+GBRT: hand-made features of every indicator row of the Data Frame (last
  value, averages over the last 3 / 7 / 30 periods and the whole frame, spread,
  and a cut flag: last value below the frame average, the paper's "price
  reduction") into xgboost.
* DNN: the flattened Data Frame, 4 dense layers of 1024 with ReLU, dropout on the
  last one, linear output; trained by ``dmeta.sales_cnn.train`` like the CNN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import nnx

from dmeta.baselines import classical
from dmeta.sales_cnn.model import dropout
from dmeta.types import Array, Key

if TYPE_CHECKING:
    from dmeta.sales_cnn.pipeline import Prepared

METHODS = ("ARIMA", "FE+GBRT", "Naive")

FE_WINDOWS = (1, 3, 7, 30)


def arima_forecast(
    series: np.ndarray, ends: np.ndarray, *, horizon: int, lags: int = 2
) -> np.ndarray:
    """Totals of the next ``horizon`` forecasts of an ARIMA(lags, 0, 0) from each end point.

    An AR(``lags``) with a constant fitted by least squares on each series up to each end
    point (``dmeta.baselines.classical.ar_forecast``; the same model as statsmodels
    ``AutoReg(lags, trend="c")``, equal to 1e-14 relative); the state-space ``ARIMA`` MLE
    took minutes for a few hundred series on the shared CPU.

    Args:
      series: f[N, L] sales series (one row per item x region).
      ends: i[E] inclusive end periods to forecast from.
      horizon: ``k`` periods to forecast and sum.
      lags: AR order p.

    Returns:
      f64[N, E] forecast totals, clipped at 0. A constant or too short history gets
      ``horizon`` times its mean.
    """
    out = [
        [classical.ar_forecast(values[: end + 1], lags, horizon).sum() for end in ends]
        for values in np.asarray(series, np.float64)
    ]
    return np.clip(np.asarray(out, np.float64).reshape(len(series), len(ends)), 0.0, None)


def fe_features(frames: np.ndarray) -> np.ndarray:
    """Hand-made features of raw Data Frames.

    Args:
      frames: f[N, M, D, T] raw (not z-scored) frames.

    Returns:
      f32[N, M * D * 7]: per row, the means over the last 1, 3, 7 and 30 periods,
      the frame mean, the frame std and a cut flag (last value < frame mean).
    """
    frames = np.asarray(frames, np.float32)
    length = frames.shape[-1]
    mean = frames.mean(-1)
    feats = [frames[..., -min(w, length) :].mean(-1) for w in FE_WINDOWS]
    feats += [mean, frames.std(-1), (frames[..., -1] < mean).astype(np.float32)]
    return np.stack(feats, -1).reshape(len(frames), -1)


def fit_predict_gbrt(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    seed: int,
    n_estimators: int = 300,
    max_depth: int = 6,
    learning_rate: float = 0.05,
    n_jobs: int = 2,
) -> np.ndarray:
    """xgboost regression trees (``classical.gbm_regressor``, histogram method) on
    ``fe_features``; returns f32[N_test] predictions."""
    model = classical.gbm_regressor(
        seed=seed,
        n_jobs=n_jobs,
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=learning_rate,
        tree_method="hist",
    )
    model.fit(x_train, y_train)
    return model.predict(x_test)


class SalesDNN(nnx.Module):
    """Flattened Data Frame -> ``layers`` dense ReLU layers -> dropout -> linear output.

    Args:
      in_features: ``4 * D * T``.
      hidden: width of each dense layer (paper 1024).
      layers: number of dense layers (paper 4).
      rate: dropout rate on the last dense layer's output (paper 0.2).
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: int = 1024,
        layers: int = 4,
        rate: float = 0.2,
        rngs: nnx.Rngs,
    ):
        sizes = (in_features,) + (hidden,) * layers
        self.dense = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(hidden, 1, rngs=rngs)
        self.rate = rate

    def __call__(self, x: Array, key: Key | None = None) -> Array:
        """x: f32[B, 4, D, T] z-scored frames -> f32[B]."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.dense:
            h = jax.nn.relu(layer(h))
        return self.out(dropout(h, self.rate, key))[:, 0]


def persistence_forecast(series: np.ndarray, ends: np.ndarray, *, horizon: int) -> np.ndarray:
    """Naive reference: the last ``horizon`` periods' total up to each end, f64[N, E]."""
    series = np.asarray(series, np.float64)
    return np.stack([series[:, end + 1 - horizon : end + 1].sum(-1) for end in ends], -1)


def forecast_baseline(
    data: Prepared,
    method: str,
    *,
    seed: int,
    arima_lags: int = 2,
    gbrt: dict | None = None,
) -> np.ndarray:
    """Test forecasts f[R, Q] of ARIMA, FE+GBRT (one model on the pooled training samples;
    ``gbrt``: ``fit_predict_gbrt`` options) or Naive, in the test row order of ``data``."""
    shape = data.test_y.shape
    series = data.series.reshape(-1, data.series.shape[-1])
    n_rows = data.series.shape[1] * len(data.test_ends)

    def by_region(pred):  # f[R * I_max, E] -> f[R, Q] in the test row order
        pred = pred.reshape(len(data.regions), n_rows)
        return np.pad(pred, ((0, 0), (0, shape[1] - n_rows)))

    if method == "ARIMA":
        return by_region(
            arima_forecast(series, data.test_ends, horizon=data.horizon, lags=arima_lags)
        )
    if method == "Naive":
        return by_region(persistence_forecast(series, data.test_ends, horizon=data.horizon))
    if method != "FE+GBRT":
        raise ValueError(f"unknown baseline {method!r}; one of {METHODS}")
    n = data.train.n
    x_train = np.concatenate([fe_features(data.train_raw[r, : n[r]]) for r in range(len(n))])
    y_train = np.concatenate([data.train_y[r, : n[r]] for r in range(len(n))])
    x_test = fe_features(data.test_raw.reshape(-1, *data.test_raw.shape[2:]))
    pred = fit_predict_gbrt(x_train, y_train, x_test, seed=seed, **(gbrt or {}))
    return pred.reshape(shape)
