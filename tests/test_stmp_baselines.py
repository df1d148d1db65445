"""STMP baselines (dmeta.stmp.baselines) on a tiny synthetic panel."""

import dataclasses

import numpy as np
import pytest

from dmeta.stmp import baselines as B
from dmeta.stmp import data as D


@pytest.fixture(scope="module")
def prep():
    data = D.make_synthetic(n_regions=3, n_days=200, n_festivals=2, seed=2)
    return D.prepare(data, cutoff=150, window=14)


def test_historical_average_is_the_cell_mean(prep):
    pred = B.historical_average(prep)
    rows, cols = np.nonzero(prep.test)
    ys = np.asarray(prep.arrays.ys)
    r, t = rows[0], cols[0]
    d = prep.data.date_type[r, t]
    same = prep.train[r] & (prep.data.date_type[r] == d)
    np.testing.assert_allclose(pred[0], ys[r, same].mean(), rtol=1e-5)
    assert pred.shape == rows.shape


def test_lag_features_look_back(prep):
    rows, cols = np.nonzero(prep.test)
    feats = B.lag_features(prep, rows[:5], cols[:5], 7)
    ys = np.asarray(prep.arrays.ys)
    np.testing.assert_allclose(feats[:, 0], ys[rows[:5], cols[:5] - 1])
    np.testing.assert_allclose(feats[:, 6], ys[rows[:5], cols[:5] - 7])
    assert feats.shape[1] == 14 + prep.data.n_types + 7 + 12 + prep.data.attrs.shape[1]


def test_xgboost_learns_the_weekly_pattern(prep):
    rows, cols = np.nonzero(prep.test)
    y = np.asarray(prep.arrays.ys)[rows, cols]
    regular = ~prep.data.is_festival[rows, cols]
    pred = B.xgboost_forecast(prep, n_estimators=20)
    assert np.mean((pred - y)[regular] ** 2) < 0.5 * np.mean((y - y.mean())[regular] ** 2)


def test_arima_recovers_a_planted_autoregression():
    data = D.make_synthetic(n_regions=2, n_days=120, n_festivals=1, seed=3)
    y = data.y.copy()
    for t in range(7, y.shape[1]):
        y[:, t] = 0.3 * y[:, 0] + 0.7 * y[:, t - 7]  # exact AR at lag 7 with intercept
    prep = D.prepare(dataclasses.replace(data, y=y), cutoff=90, window=14)
    rows, cols = np.nonzero(prep.test)
    np.testing.assert_allclose(B.arima_forecast(prep, lags=7), np.asarray(prep.arrays.ys)[rows, cols],
                               rtol=1e-3)  # fmt: skip


def test_maml_adapts_per_cell_with_its_inner_gradient_clipped(prep):
    rows, _ = np.nonzero(prep.test)
    sizes = B.MAMLSizes(n_tasks=2, n_query=4, n_support=4)
    kw = dict(window_len=14, hidden=8, n_steps=3, sizes=sizes, inner_lr=5.0)
    clipped = B.maml_forecast(prep, inner_clip=0.1, **kw)
    assert clipped.shape == rows.shape and np.isfinite(clipped).all()
    assert not np.allclose(clipped, B.maml_forecast(prep, inner_clip=None, **kw))


def test_lstm_trains_through_the_loop(prep):
    rows, _ = np.nonzero(prep.test)
    pred = B.lstm_forecast(prep, window_len=14, hidden=4, n_steps=3, batch=8)
    assert pred.shape == rows.shape and np.isfinite(pred).all()


def test_a_region_with_no_training_demand_does_not_turn_the_panel_to_nan(caplog):
    data = D.make_synthetic(n_regions=3, n_days=200, n_festivals=2, seed=2)
    y = data.y.copy()
    y[1, :150] = 0.0  # region 1 sells nothing before the cutoff
    with caplog.at_level("WARNING"):
        prep = D.prepare(dataclasses.replace(data, y=y), cutoff=150, window=14)
    assert "no positive training demand" in caplog.text and data.regions[1] in caplog.text
    assert np.isfinite(prep.scale).all() and np.isfinite(np.asarray(prep.arrays.ys)).all()
    assert np.isfinite(B.arima_forecast(prep)).all()


@pytest.mark.parametrize(
    ("method", "function"),
    [
        ("HistAvg", "historical_average"),
        ("ARIMA", "arima_forecast"),
        ("XGBoost", "xgboost_forecast"),
    ],
)
def test_classical_baselines_fit_on_the_neural_methods_targets(monkeypatch, method, function):
    """``protocol.classical_targets = "train"``: a classical baseline fits on the targets the
    neural methods train on (the early-stopping days stay inputs only); ``"known"``, the
    former protocol, on every target before the cutoff."""
    from dmeta.config import replace_path
    from dmeta.stmp import protocol
    from dmeta.stmp.config import get_config

    data = D.make_synthetic(n_regions=3, n_days=200, n_festivals=2, seed=2)
    prep = D.prepare(data, cutoff=150, window=14, val_days=20)
    assert prep.val.any()
    seen = []
    monkeypatch.setattr(B, function, lambda p, **kw: seen.append(p) or np.zeros(3))
    for targets in ("train", "known"):
        cfg = replace_path(get_config(smoke=True), "protocol.classical_targets", targets)
        protocol.forecast(method, prep, cfg, seed=0)
    fit_train, fit_known = seen
    np.testing.assert_array_equal(fit_train.known, prep.train)
    np.testing.assert_array_equal(fit_known.known, prep.train | prep.val)
    assert fit_train.test is prep.test and fit_train.arrays is prep.arrays
