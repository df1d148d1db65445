"""The STMP protocol: panel loading, train / validation / test splits, methods, tuning, scoring.

One cell of the results table is a (method, seed, setting): ``setting`` is ``"full"``
(all festival training data) or ``"one_week"`` (festival training targets of one week
only; STMP and the baselines, not the ablations). ``run_cell`` prepares the split,
chooses the method's hyperparameters on the validation period (``tuning.trials`` grid
points, MSE in original units), fits on the training period and scores one-step-ahead
forecasts of the test period on regular and festival days. Cells are independent, so a
resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.config import replace_path
from dmeta.data.frames import DataError
from dmeta.data.spec import parse_data_spec
from dmeta.report.stmp import FORECASTS
from dmeta.stmp import baselines as B
from dmeta.stmp import data as D
from dmeta.stmp import model as M
from dmeta.stmp import train as T
from dmeta.stmp.config import DataConfig, STMPConfig
from dmeta.train.harness import Cell, hp_rows, tune, write_atomic

logger = logging.getLogger(__name__)

EXPERIMENT = "stmp"
ABLATIONS = {
    "STMP": {},
    "STMP-deterministic": {"amortized": False},
    "STMP-no-jump": {"jump": False},
    "STMP-joint": {"mode": "joint"},
}
BASELINES = ("HistAvg", "ARIMA", "XGBoost", "LSTM", "MAML")
METHODS = (*ABLATIONS, *BASELINES)
ONE_WEEK_METHODS = ("STMP", *BASELINES)
_STMP_GRID = {"train.lr": "stmp_lr", "train.beta": "stmp_beta"}
TUNED = {  # method -> {config path: the ``tuning`` field of the alternatives}
    **{method: _STMP_GRID for method in ABLATIONS},
    "HistAvg": {},
    "ARIMA": {"baselines.arima_lags": "arima_lags"},
    "XGBoost": {
        "baselines.xgb_max_depth": "xgb_max_depth",
        "baselines.xgb_learning_rate": "xgb_learning_rate",
    },
    "LSTM": {"baselines.lstm_lr": "lstm_lr", "model.hidden": "lstm_hidden"},
    "MAML": {"baselines.maml_lr": "maml_lr", "baselines.maml_inner_lr": "maml_inner_lr"},
}


def load_panel(spec: str, cfg: DataConfig) -> tuple[str, D.STMPData]:
    """``--data`` spec -> (dataset name, panel), cut to ``cfg.max_regions`` regions."""
    parsed = parse_data_spec(spec)
    if parsed.name == "synthetic":
        data = D.make_synthetic(n_regions=cfg.synthetic_regions, n_days=cfg.synthetic_days)
    elif parsed.name == "favorita":
        data = D.load_favorita(parsed.path)
    elif parsed.name == "walmart":
        data = D.load_walmart(parsed.path)
    elif parsed.name == "rossmann":  # 1,115 stores: the first 100 unless max_regions
        data = D.load_rossmann(parsed.path, max_stores=cfg.max_regions or 100)
    elif parsed.name == "table":
        data = D.load_table(parsed.path)
    else:
        raise DataError(
            f"--data {spec!r}: STMP reads synthetic, favorita, walmart, rossmann, table"
        )
    if cfg.max_regions is not None:
        keep = slice(0, cfg.max_regions)
        data = dataclasses.replace(
            data, y=data.y[keep], observed=data.observed[keep],
            date_type=data.date_type[keep], attrs=data.attrs[keep], regions=data.regions[keep],
        )  # fmt: skip
    return parsed.name, data


def cells(cfg: STMPConfig, methods: tuple[str, ...], seeds: int) -> list[Cell]:
    """The run's cells: every method x seed in "full", then "one_week" (if configured)."""
    out = [Cell(m, s, "full") for s in range(seeds) for m in methods]
    if cfg.protocol.one_week:
        out += [Cell(m, s, "one_week") for s in range(seeds) for m in methods
                if m in ONE_WEEK_METHODS]  # fmt: skip
    return out


@functools.lru_cache(maxsize=4)
def split(data: D.STMPData, cfg: STMPConfig, setting: str, validation: bool) -> D.Prepared:
    """Targets of ``setting``: the test period is the last ``test_days`` (at most a quarter
    of the days); with ``validation`` the period of the same length before it is scored
    instead, and training ends where it starts."""
    n_days = data.y.shape[1]
    horizon = min(cfg.protocol.test_days, n_days // 4)  # weekly panels: the last quarter
    cutoff = n_days - horizon
    return D.prepare(
        data,
        cutoff=cutoff - horizon if validation else cutoff,
        test_end=cutoff if validation else None,
        window=cfg.model.window,
        one_festival_week=setting == "one_week",
    )


def fit_stmp(prep: D.Prepared, cfg: STMPConfig, seed: int, *, amortized=True, jump=True,
             mode="alternate") -> np.ndarray:  # fmt: skip
    """Trains one STMP variant; scaled predictions f32[N] for ``prep.test``."""
    graphdef, params = M.build(
        **dataclasses.asdict(cfg.model), period=prep.data.period, n_types=prep.data.n_types,
        n_attrs=prep.data.attrs.shape[1], n_regions=len(prep.data.regions), jump=jump,
        amortized=amortized, seed=seed,
    )  # fmt: skip
    train = dataclasses.asdict(cfg.train)
    shard = train.pop("data_parallel")
    params, _ = T.fit(graphdef, params, prep, key=jax.random.key(seed), shard=shard, mode=mode,
                      progress=True, **train)  # fmt: skip
    return T.predict(graphdef, params, prep, key=jax.random.key(seed + 1000),
                     n_context=cfg.protocol.eval_context)  # fmt: skip


def forecast(method: str, prep: D.Prepared, cfg: STMPConfig, seed: int) -> np.ndarray:
    """Scaled one-step-ahead predictions f32[N] of ``method`` for ``prep.test``."""
    if method in ABLATIONS:
        return fit_stmp(prep, cfg, seed, **ABLATIONS[method])
    b, window, hidden = cfg.baselines, cfg.model.window, cfg.model.hidden
    if method == "HistAvg":
        return B.historical_average(prep)
    if method == "ARIMA":
        return B.arima_forecast(prep, lags=b.arima_lags)
    if method == "XGBoost":
        return B.xgboost_forecast(prep, seed=seed, lags=window, n_estimators=b.xgb_estimators,
                                  max_depth=b.xgb_max_depth,
                                  learning_rate=b.xgb_learning_rate)  # fmt: skip
    if method == "LSTM":
        return B.lstm_forecast(prep, seed=seed, window_len=window, hidden=hidden,
                               n_steps=b.lstm_steps, lr=b.lstm_lr)  # fmt: skip
    if method == "MAML":
        t = cfg.train
        return B.maml_forecast(prep, seed=seed, window_len=window, hidden=hidden,
                               n_steps=b.lstm_steps, n_tasks=t.n_tasks, n_query=t.n_query,
                               n_support=t.n_context // 2, inner_lr=b.maml_inner_lr,
                               lr=b.maml_lr)  # fmt: skip
    raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")


def targets(prep: D.Prepared, pred_scaled: np.ndarray) -> tuple[np.ndarray, ...]:
    """Test targets in original units: y f64[N], prediction f64[N], festival bool[N]."""
    rows, cols = np.nonzero(prep.test)
    pred = pred_scaled * prep.scale[rows]
    return prep.data.y[rows, cols], pred, prep.data.is_festival[rows, cols]


def score(prep: D.Prepared, pred_scaled: np.ndarray) -> dict[str, dict[str, float]]:
    """Metrics in original units on regular and festival test days: group -> metric -> value."""
    y, pred, fest = targets(prep, pred_scaled)
    out = {}
    for group, sel in (("regular", ~fest), ("festival", fest)):
        if sel.any():
            out[group] = {
                name: float(fn(y[sel], pred[sel]))
                for name, fn in (("mse", metrics.mse), ("mae", metrics.mae),
                                 ("rmse", metrics.rmse), ("mape", metrics.mape))
            }  # fmt: skip
    return out


def choose(cell: Cell, data: D.STMPData, cfg: STMPConfig) -> dict[str, float]:
    """The cell's method's hyperparameters (config path -> value): the config's values followed by
    the ``tuning`` alternatives, ``tuning.trials`` points scored by validation MSE."""
    grid = {
        path: (functools.reduce(getattr, path.split("."), cfg), *getattr(cfg.tuning, alt))
        for path, alt in TUNED[cell.method].items()
    }
    val = functools.partial(split, data, cfg, cell.setting, True)  # built only if scored

    def evaluate(point):
        v = val()
        y, pred, _ = targets(v, forecast(cell.method, v, configured(cfg, point), cell.seed))
        return metrics.mse(y, pred)

    return tune(grid, evaluate, trials=cfg.tuning.trials).best


def configured(cfg: STMPConfig, point: dict) -> STMPConfig:
    """``cfg`` with the grid point's values (config path -> value)."""
    return functools.reduce(lambda c, pv: replace_path(c, *pv), point.items(), cfg)


def run_cell(cell: Cell, data: D.STMPData, dataset: str, cfg: STMPConfig, out: Path) -> list:
    """Tunes, fits and scores one cell: long-schema rows (metrics per ``setting/day kind``
    and ``hp:<config path>`` rows); seed 0 of "full" also writes its festival forecasts."""
    best = choose(cell, data, cfg)
    prep = split(data, cfg, cell.setting, False)
    pred = forecast(cell.method, prep, configured(cfg, best), cell.seed)
    keys = dict(experiment=EXPERIMENT, dataset=dataset, method=cell.method, seed=cell.seed)
    rows = [
        dict(keys, group=f"{cell.setting}/{group}", metric=metric, value=value)
        for group, values in score(prep, pred).items()
        for metric, value in values.items()
    ]
    if cell.seed == 0 and cell.setting == "full":
        window = festival_window(prep, pred)
        if window is not None:
            text = window.assign(method=cell.method).to_csv(index=False)
            write_atomic(out / FORECASTS / f"{cell.key}.csv", text)
    return rows + hp_rows(best, **keys, group=cell.setting)


def festival_window(prep: D.Prepared, pred_scaled: np.ndarray) -> pd.DataFrame | None:
    """Forecasts of the busiest region from 21 days before to 13 days after its largest
    test-period festival day: columns region, date, actual, forecast, festival (None when
    the region has no test festival day; ``dmeta.report.stmp.plots`` draws them)."""
    rows, cols = np.nonzero(prep.test)
    region = int(np.argmax(prep.scale))
    fest_days = np.flatnonzero(prep.test[region] & prep.data.is_festival[region])
    if fest_days.size == 0:
        return None
    peak = fest_days[np.argmax(prep.data.y[region, fest_days])]
    mine = rows == region
    day_pos = {t: i for i, t in enumerate(cols[mine])}
    span = range(max(peak - 21, 0), min(peak + 14, prep.data.y.shape[1]))
    shown = [t for t in span if t in day_pos]
    pred = pred_scaled[mine] * prep.scale[region]
    return pd.DataFrame({
        "region": prep.data.regions[region],
        "date": prep.data.dates[shown],
        "actual": prep.data.y[region, shown],
        "forecast": [pred[day_pos[t]] for t in shown],
        "festival": prep.data.is_festival[region, shown],
    })  # fmt: skip
