"""Classical pieces shared by every paper's baselines: one least-squares AR(p), one
gradient-boosting regressor, one seasonal-naive forecast.

Each paper's own baselines live in ``dmeta/<paper>/baselines.py`` and build on these.
"""

from __future__ import annotations

import numpy as np


def lagged(series: np.ndarray, at: np.ndarray, lags: int) -> np.ndarray:
    """The ``lags`` values before each position: ``out[k, j] = series[at[k] - 1 - j]``.

    Args:
      series: f[L] one series (or f[R, L] with ``at`` indexing the last axis).
      at: i[K] positions, each at least ``lags``.
      lags: p.

    Returns:
      f[K, p] (or f[R, K, p]).
    """
    back = np.asarray(at)[:, None] - np.arange(1, lags + 1)[None, :]
    return np.asarray(series)[..., back]


def least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Ordinary least squares coefficients (minimum norm when the design is rank-deficient)."""
    coef, *_ = np.linalg.lstsq(
        np.asarray(design, np.float64), np.asarray(target, np.float64), rcond=None
    )
    return coef


def fit_ar(series: np.ndarray, lags: int) -> np.ndarray:
    """AR(p) with intercept by conditional least squares on every position >= p.

    Args:
      series: f[L] history, L > 2p.

    Returns:
      f64[1 + p] coefficients: intercept, then lag 1..p.

    Raises:
      ValueError: a history too short for p lags.
    """
    series = np.asarray(series, np.float64)
    if len(series) <= 2 * lags:
        raise ValueError(f"AR({lags}) needs more than {2 * lags} values, got {len(series)}")
    at = np.arange(lags, len(series))
    design = np.concatenate([np.ones((len(at), 1)), lagged(series, at, lags)], axis=1)
    return least_squares(design, series[at])


def ar_forecast(series: np.ndarray, lags: int, horizon: int) -> np.ndarray:
    """The next ``horizon`` values of a least-squares AR(p), each fed back as a lag.

    Returns:
      f64[horizon]. A constant or too short history gives its mean.
    """
    series = np.asarray(series, np.float64)
    if len(series) <= 2 * lags or np.ptp(series) == 0:
        return np.full(horizon, series.mean())
    coef = fit_ar(series, lags)
    history, out = list(series[-lags:]), np.empty(horizon)
    for h in range(horizon):
        out[h] = coef[0] + coef[1:] @ np.asarray(history[::-1][:lags])
        history.append(out[h])
    return out


def seasonal_naive(series: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """Repeats the last full season: ``out[h] = series[L - season + h % season]``.

    Args:
      series: f[..., L] histories with L >= season.

    Returns:
      f[..., horizon].
    """
    series = np.asarray(series)
    start = series.shape[-1] - season
    return series[..., start + np.arange(horizon) % season]


def gbm_regressor(*, seed: int, n_jobs: int = 1, **params):
    """xgboost's ``XGBRegressor`` with the shared defaults (histogram trees, subsampling),
    any of them replaced by ``params`` (e.g. the values a tuning grid chose)."""
    from xgboost import XGBRegressor

    defaults = dict(
        n_estimators=300,
        max_depth=6,
        learning_rate=0.05,
        subsample=0.8,
        colsample_bytree=0.8,
        tree_method="hist",
    )
    return XGBRegressor(**{**defaults, **params}, n_jobs=n_jobs, random_state=seed)
