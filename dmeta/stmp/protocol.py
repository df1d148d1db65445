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
import gzip
import logging
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.config import replace_path
from dmeta.data.frames import DataError
from dmeta.data.spec import parse_data_spec
from dmeta.datasets import LOADERS, _csv, favorita, rossmann, table, walmart
from dmeta.report.stmp import FORECASTS
from dmeta.stmp import baselines as B
from dmeta.stmp import data as D
from dmeta.stmp import model as M
from dmeta.stmp import train as T
from dmeta.stmp.config import DataConfig, STMPConfig
from dmeta.train.harness import Cell, hp_rows, shared_choice, tune, tuning_memo, write_atomic

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
_STMP_GRID = {
    "train.lr": "stmp_lr",
    "train.beta": "stmp_beta",
    "train.n_context": "stmp_n_context",
    "model.hidden": "stmp_hidden",
    "train.n_tasks": "stmp_n_tasks",
}
TUNED = {  # method -> {config path: the ``tuning`` field of the alternatives}
    **{method: _STMP_GRID for method in ABLATIONS},
    # deterministic latents have no KL term and no context sets, so beta and the context
    # size do nothing there: its grid is the learning rate, the width and the meta-batch
    "STMP-deterministic": {
        "train.lr": "stmp_lr",
        "model.hidden": "stmp_hidden",
        "train.n_tasks": "stmp_n_tasks",
    },
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
    adapters = {"favorita": from_favorita, "walmart": from_walmart, "table": from_table}
    if parsed.name == "synthetic":
        data = D.make_synthetic(n_regions=cfg.synthetic_regions, n_days=cfg.synthetic_days)
    elif parsed.name == "rossmann":  # 1,115 stores: the first 100 unless max_regions
        data = from_rossmann(LOADERS["rossmann"](parsed.path), max_stores=cfg.max_regions or 100)
    elif parsed.name in adapters:
        data = adapters[parsed.name](LOADERS[parsed.name](parsed.path))
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
    logger.info("%s: %d regions x %d days", parsed.name, *data.y.shape)
    return parsed.name, data


# ----------------------------------------------------------------------------- adapters

WALMART_HOLIDAYS = {2: "super_bowl", 9: "labor_day", 11: "thanksgiving", 12: "christmas"}
ROSSMANN_FESTIVALS = ("public_holiday", "easter", "christmas", "promo")


def _one_hot(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    parts = [pd.get_dummies(frame[c].astype(str), prefix=c, dtype=np.float32) for c in columns]
    onehot = pd.concat(parts, axis=1)
    return onehot.to_numpy(np.float32), tuple(onehot.columns)


def _by_id(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` sorted by its ids (numerically when they are integers)."""
    rank = pd.Index(_csv.id_order(frame[column])).get_indexer(frame[column])
    return frame.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)


def _standardized(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / (v.std() + 1e-9)


def _dense(rows: pd.DataFrame, source, column: str, regions: list, freq: str = "D"):
    """Rows ``id, ds, y, _line`` -> dense y f64[R, D], observed bool[R, D], dates at freq
    (``column``: the file's date column, named in messages)."""
    named = rows.rename(columns={"ds": column})
    dup = rows.duplicated(["id", "ds"]).to_numpy()
    _csv.check(named, source, column, dup, "repeats a (region, date)",
               rows["id"].astype(str) + " " + rows["ds"].astype(str))  # fmt: skip
    dates = pd.date_range(rows["ds"].min(), rows["ds"].max(), freq=freq)
    t = dates.get_indexer(rows["ds"])
    _csv.check(named, source, column, t < 0, f"is off the {freq} calendar")
    y = np.zeros((len(regions), len(dates)))
    observed = np.zeros_like(y, dtype=bool)
    r = pd.Index(regions).get_indexer(rows["id"])
    y[r, t] = rows["y"].to_numpy()
    observed[r, t] = True
    return y, observed, dates


def from_favorita(src: favorita.Favorita) -> D.STMPData:
    """Stores as regions, daily transactions as target, holidays as date types.

    National holidays apply to every store, regional ones to the stores of that state,
    local ones to the stores of that city; transferred holidays and ``Work Day`` rows are
    regular days. Days without a transactions row are unobserved.
    """
    stores = _by_id(src.stores, "store_nbr")
    attrs, attr_names = _one_hot(stores, ["city", "state", "type", "cluster"])
    tx = src.transactions
    rows = pd.DataFrame({"id": tx["store_nbr"], "ds": tx["date"], "y": tx["transactions"],
                         "_line": tx["_line"]})  # fmt: skip
    y, observed, dates = _dense(rows, src.transactions_path, "date", list(stores["store_nbr"]))
    priority = {name: i for i, name in enumerate(favorita.KINDS)}
    best = np.full(y.shape, len(favorita.KINDS))  # lower is higher priority
    city, state = stores["city"].to_numpy(), stores["state"].to_numpy()
    for row in src.holidays.itertuples(index=False):
        t = dates.get_indexer([row.date])[0]
        if not isinstance(row.kind, str) or t < 0:  # not a festival
            continue
        if row.locale == "National":
            where = np.ones(len(stores), bool)
        else:
            where = (state if row.locale == "Regional" else city) == row.locale_name
        best[where, t] = np.minimum(best[where, t], priority[row.kind])
    festival = best < len(favorita.KINDS)
    date_type = np.where(festival, best + len(D.REGULAR_DAILY), D.regular_types(dates)[None, :])
    return D.STMPData(
        y=y, observed=observed, date_type=date_type.astype(np.int32), attrs=attrs, dates=dates,
        regions=tuple(f"store{s}" for s in stores["store_nbr"]),
        type_names=D.REGULAR_DAILY + favorita.KINDS, attr_names=attr_names,
    )  # fmt: skip


def from_walmart(src: walmart.Walmart) -> D.STMPData:
    """Stores as regions, weekly sales summed over departments, holiday weeks named by month
    (Super Bowl, Labor Day, Thanksgiving, Christmas); the regular type is "week". Negative
    department rows (returns) are kept; a negative store-week total raises."""
    stores = _by_id(src.stores, "store")
    onehot, names = _one_hot(stores.rename(columns={"type": "Type"}), ["Type"])
    attrs = np.c_[onehot, _standardized(np.log(stores["size"].to_numpy() + 1.0))]
    weekly = src.train.groupby(["store", "date"], as_index=False).agg(
        y=("weekly_sales", "sum"), holiday=("holiday", "max"), _line=("_line", "min")
    )
    _csv.check(weekly, src.train_path, "Weekly_Sales", (weekly["y"] < 0).to_numpy(),
               "sums to a negative store-week total for store", weekly["store"])  # fmt: skip
    rows = weekly.rename(columns={"store": "id", "date": "ds"})
    y, observed, dates = _dense(rows, src.train_path, "Date", list(stores["store"]), freq="W-FRI")
    names_by_month = ("week",) + tuple(WALMART_HOLIDAYS.values())
    date_type = np.zeros(len(dates), np.int32)
    for day in weekly.loc[weekly["holiday"].astype(bool), "date"].unique():
        month = pd.Timestamp(day).month
        if month not in WALMART_HOLIDAYS:
            raise DataError(
                f"{src.train_path}: column 'IsHoliday' marks {day} (month {month}), "
                "not a known holiday"
            )
        date_type[dates.get_loc(day)] = names_by_month.index(WALMART_HOLIDAYS[month])
    return D.STMPData(
        y=y, observed=observed, date_type=np.broadcast_to(date_type, y.shape).copy(),
        attrs=attrs.astype(np.float32), dates=dates,
        regions=tuple(f"store{s}" for s in stores["store"]), type_names=names_by_month,
        attr_names=names + ("log_size",), n_regular=1, period=4,
    )  # fmt: skip


def from_rossmann(src: rossmann.Rossmann, *, max_stores: int | None = None) -> D.STMPData:
    """Stores as regions (the first ``max_stores``), daily sales; closed days unobserved;
    state holidays a/b/c are public holiday / Easter / Christmas, promo days a date type
    too (holidays win over promo)."""
    df = src.days
    if max_stores is not None:
        df = df[df["store"].isin(_csv.id_order(df["store"])[:max_stores])].reset_index(drop=True)
    stores = _by_id(df.drop_duplicates("store"), "store")
    keep = df["open"].to_numpy()
    rows = pd.DataFrame({"id": df["store"], "ds": df["date"], "y": df["sales"],
                         "_line": df["_line"]})[keep]  # fmt: skip
    y, observed, dates = _dense(rows, src.path, "Date", list(stores["store"]))
    holiday = df["state_holiday"]
    kind = np.select(
        [holiday == "a", holiday == "b", holiday == "c", df["promo"].to_numpy()],
        [2, 3, 4, 5], default=-1,
    )  # fmt: skip
    date_type = np.broadcast_to(D.regular_types(dates), y.shape).copy()
    r = pd.Index(stores["store"]).get_indexer(df["store"])
    t = dates.get_indexer(df["date"])
    fest = kind >= 0
    date_type[r[fest], t[fest]] = kind[fest]
    columns = {"store_type": "StoreType", "assortment": "Assortment", "promo2": "Promo2"}
    onehot, names = _one_hot(stores.rename(columns=columns), list(columns.values()))
    dist = np.log1p(stores["competition_distance"].to_numpy(float))
    if np.isnan(dist).any():  # a few stores.csv rows leave CompetitionDistance empty
        missing = list(stores["store"][np.isnan(dist)])
        logger.warning("%s: CompetitionDistance missing for stores %s; set to the median "
                       "of the others", src.path, missing)  # fmt: skip
        dist = np.where(np.isnan(dist), np.nanmedian(dist), dist)
    return D.STMPData(
        y=y, observed=observed, date_type=date_type.astype(np.int32),
        attrs=np.c_[onehot, _standardized(dist)].astype(np.float32), dates=dates,
        regions=tuple(f"store{s}" for s in stores["store"]),
        type_names=D.REGULAR_DAILY + ROSSMANN_FESTIVALS,
        attr_names=names + ("log_competition_distance",),
    )  # fmt: skip


def from_table(src: table.Table) -> D.STMPData:
    """A daily panel from a long table: one row per observed region-day; ``regions.csv``
    attributes (numeric standardized, others one-hot); ``calendar.csv`` date types (an
    empty ``unique_id``: all regions); other days are weekday / weekend."""
    series = src.series
    regions = src.regions
    if regions is None:
        regions = pd.DataFrame({"unique_id": _csv.id_order(series["unique_id"])})
    parts, names = [], []
    for col in regions.columns.drop("unique_id"):
        values = pd.to_numeric(regions[col], errors="coerce")
        if values.notna().all():
            parts.append(_standardized(values.to_numpy(float))[:, None])
            names.append(col)
        else:
            onehot, more = _one_hot(regions, [col])
            parts.append(onehot)
            names.extend(more)
    attrs = np.concatenate(parts, axis=1) if parts else np.zeros((len(regions), 0))
    unknown = ~series["unique_id"].isin(regions["unique_id"]).to_numpy()
    _csv.check(series, src.path, "unique_id", unknown, "is not in regions.csv")
    _csv.check(series, src.path, "y", (series["y"] < 0).to_numpy(), "is negative")
    rows = series.rename(columns={"unique_id": "id"})
    y, observed, dates = _dense(rows, src.path, "ds", list(regions["unique_id"]))
    date_type, type_names = _calendar_types(src, dates, regions, y.shape)
    return D.STMPData(
        y=y, observed=observed, date_type=date_type.astype(np.int32),
        attrs=attrs.astype(np.float32), dates=dates, regions=tuple(regions["unique_id"]),
        type_names=type_names, attr_names=tuple(names),
    )  # fmt: skip


def _calendar_types(src: table.Table, dates, regions: pd.DataFrame, shape):
    date_type = np.broadcast_to(D.regular_types(dates), shape).copy()
    cal = src.calendar
    if cal is None:
        return date_type, D.REGULAR_DAILY
    cal_src = src.path.parent / "calendar.csv"
    festivals = tuple(sorted(cal["date_type"].unique()))
    reserved = cal["date_type"].isin(D.REGULAR_DAILY).to_numpy()
    _csv.check(cal, cal_src, "date_type", reserved, "uses a reserved name")
    type_names = D.REGULAR_DAILY + festivals
    r = pd.Index(regions["unique_id"]).get_indexer(cal["unique_id"])
    specific = (cal["unique_id"] != "").to_numpy()
    _csv.check(cal, cal_src, "unique_id", specific & (r < 0), "is not in regions.csv")
    t = dates.get_indexer(cal["ds"])
    kind = np.array([type_names.index(k) for k in cal["date_type"]], np.int64)
    for i in np.flatnonzero(t >= 0):
        if specific[i]:
            date_type[r[i], t[i]] = kind[i]
        else:
            date_type[:, t[i]] = kind[i]
    return date_type, type_names


def cells(cfg: STMPConfig, methods: tuple[str, ...], seeds: int) -> list[Cell]:
    """The run's cells: every method x seed in "full", then "one_week" (each if configured)."""
    if not (cfg.protocol.full or cfg.protocol.one_week):
        raise ValueError("protocol.full and protocol.one_week are both false: no setting to run")
    out = [Cell(m, s, "full") for s in range(seeds) for m in methods] if cfg.protocol.full else []
    if cfg.protocol.one_week:
        out += [Cell(m, s, "one_week") for s in range(seeds) for m in methods
                if m in ONE_WEEK_METHODS]  # fmt: skip
    return out


@functools.lru_cache(maxsize=4)
def split(data: D.STMPData, cfg: STMPConfig, setting: str, validation: bool) -> D.Prepared:
    """Targets of ``setting``: the test period is the last ``test_days`` (at most a quarter
    of the days); with ``validation`` the period of the same length before it is scored
    instead, and training ends where it starts. The last ``val_days`` (at most an eighth
    of the days) before that cutoff are the neural methods' early-stopping targets."""
    n_days = data.y.shape[1]
    horizon = min(cfg.protocol.test_days, n_days // 4)  # weekly panels: the last quarter
    cutoff = n_days - horizon
    return D.prepare(
        data,
        cutoff=cutoff - horizon if validation else cutoff,
        test_end=cutoff if validation else None,
        window=cfg.model.window,
        val_days=min(cfg.protocol.val_days, n_days // 8),
        one_festival_week=setting == "one_week",
        unseen_types=cfg.protocol.unseen_types,
        closed_days=cfg.protocol.closed_days,
    )


def fit_stmp(prep: D.Prepared, cfg: STMPConfig, seed: int, *, amortized=True, jump=True,
             mode="alternate") -> np.ndarray:  # fmt: skip
    """Trains one STMP variant (early-stopped on ``prep.val``); scaled predictions f32[N]
    for ``prep.test``."""
    model = dict(dataclasses.asdict(cfg.model), jump=jump, amortized=amortized)
    graphdef, params = M.build(
        **model, period=prep.data.period, n_types=prep.data.n_types,
        n_attrs=prep.data.attrs.shape[1], n_regions=len(prep.data.regions), seed=seed,
    )  # fmt: skip
    train = dataclasses.asdict(cfg.train)
    shard, log_every = train.pop("data_parallel"), train.pop("eval_every")
    weighting = train.pop("query_weights")
    desc = f"stmp {mode} jump={jump} amortized={amortized} lr={train['lr']:g}"
    params, _ = T.fit(graphdef, params, prep, key=jax.random.key(seed), shard=shard, mode=mode,
                      log_every=log_every, weighting=weighting, desc=desc, model_settings=model,
                      eval_context=cfg.protocol.eval_context,
                      eval_draws=cfg.protocol.eval_draws, **train)  # fmt: skip
    return T.predict(graphdef, params, prep, key=jax.random.key(seed + 1000),
                     n_context=cfg.protocol.eval_context,
                     draws=cfg.protocol.eval_draws)  # fmt: skip


def forecast(method: str, prep: D.Prepared, cfg: STMPConfig, seed: int) -> np.ndarray:
    """Scaled one-step-ahead predictions f32[N] of ``method`` for ``prep.test``."""
    if method in ABLATIONS:
        return fit_stmp(prep, cfg, seed, **ABLATIONS[method])
    b, window, hidden = cfg.baselines, cfg.model.window, cfg.model.hidden
    # the classical baselines fit on prep.known: the neural methods' targets unless configured
    fit_on = prep if cfg.protocol.classical_targets == "known" else D.fitted_on_train(prep)
    if method == "HistAvg":
        return B.historical_average(fit_on)
    if method == "ARIMA":
        return B.arima_forecast(fit_on, lags=b.arima_lags)
    if method == "XGBoost":
        return B.xgboost_forecast(fit_on, seed=seed, lags=window, n_estimators=b.xgb_estimators,
                                  max_depth=b.xgb_max_depth,
                                  learning_rate=b.xgb_learning_rate)  # fmt: skip
    t = cfg.train
    budget = dict(n_steps=t.n_steps, eval_every=t.eval_every, patience=t.patience, ema=t.ema,
                  lr_decays=t.lr_decays, lr_factor=t.lr_factor,
                  min_steps=t.min_steps)  # fmt: skip
    if method == "LSTM":
        return B.lstm_forecast(prep, seed=seed, window_len=window, hidden=hidden, lr=b.lstm_lr,
                               **budget)  # fmt: skip
    if method == "MAML":
        sizes = B.MAMLSizes(n_tasks=t.n_tasks, n_query=t.n_query, n_support=t.n_context // 2)
        return B.maml_forecast(prep, seed=seed, window_len=window, hidden=hidden, sizes=sizes,
                               inner_lr=b.maml_inner_lr, inner_clip=b.maml_inner_clip,
                               lr=b.maml_lr, **budget)  # fmt: skip
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


def choose(
    cell: Cell, data: D.STMPData, cfg: STMPConfig, out: Path | None = None
) -> dict[str, float]:
    """The cell's method's hyperparameters (config path -> value): the config's values followed by
    the ``tuning`` alternatives, ``tuning.trials`` points scored by validation MSE (recorded
    in the run folder ``out``, see ``dmeta.train.harness.tuning_memo``)."""
    grid = {
        path: (functools.reduce(getattr, path.split("."), cfg), *getattr(cfg.tuning, alt))
        for path, alt in TUNED[cell.method].items()
    }
    val = functools.partial(split, data, cfg, cell.setting, True)  # built only if scored

    def evaluate(point):
        v = val()
        y, pred, _ = targets(v, forecast(cell.method, v, configured(cfg, point), cell.seed))
        return metrics.mse(y, pred)

    memo = tuning_memo(out, cell, per_seed=cfg.tuning.per_seed)
    return tune(grid, evaluate, trials=cfg.tuning.trials, memo=memo).best


def configured(cfg: STMPConfig, point: dict) -> STMPConfig:
    """``cfg`` with the grid point's values (config path -> value)."""
    return functools.reduce(lambda c, pv: replace_path(c, *pv), point.items(), cfg)


def run_cell(cell: Cell, data: D.STMPData, dataset: str, cfg: STMPConfig, out: Path) -> list:
    """Tunes (``tuning.per_seed``: this cell, else once per method and setting), fits and
    scores one cell: long-schema rows (metrics per ``setting/day kind`` and ``hp:<config
    path>`` rows); seed 0 of "full" also writes its festival forecasts, and with
    ``protocol.test_forecasts`` every cell writes all of its test forecasts."""
    best = shared_choice(
        out, cell, lambda: choose(cell, data, cfg, out), per_seed=cfg.tuning.per_seed
    )
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
    if cfg.protocol.test_forecasts:
        text = (
            test_frame(prep, pred)
            .assign(method=cell.method)
            .to_csv(index=False, float_format="%.6g")
        )
        write_atomic(out / FORECASTS / f"{cell.key}.test.csv.gz",
                     gzip.compress(text.encode(), mtime=0))  # fmt: skip
    return rows + hp_rows(best, **keys, group=cell.setting)


def test_frame(prep: D.Prepared, pred_scaled: np.ndarray) -> pd.DataFrame:
    """Every test target: columns region, date, date_type (its name), festival, actual and
    forecast in original units (one row per target, in ``targets``' order)."""
    rows, cols = np.nonzero(prep.test)
    y, pred, fest = targets(prep, pred_scaled)
    return pd.DataFrame({
        "region": np.asarray(prep.data.regions)[rows],
        "date": prep.data.dates[cols],
        "date_type": np.asarray(prep.data.type_names)[prep.data.date_type[rows, cols]],
        "festival": fest,
        "actual": y,
        "forecast": pred,
    })  # fmt: skip


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
