"""The Sales CNN protocol: data loading, the Table 1 methods and the sweeps, scoring.

Table 1: test MSE per region (and averaged) of ARIMA, FE+GBRT, DNN, CNN, CNN+WD,
CNN+WD+TL, Single-CNN and a naive last-interval reference. Sweeps of CNN+WD+TL: MSE of the
average sales per period vs target interval length (Figure 5), MSE vs frame length
(Figure 6) and vs beta (Figure 7). ``SalesRun.run_cell`` computes one ``Cell``; the
last ``KEEP_PREPARED`` prepared frame sets (GBs each on daily data) and the seed-independent
baselines are kept in memory between cells and recomputed deterministically when a later
or resumed cell needs them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import DataError
from dmeta.data.spec import parse_data_spec
from dmeta.datasets import LOADERS, _csv, completejourney
from dmeta.datasets.itemlog import ItemLog, checked
from dmeta.sales_cnn import baselines
from dmeta.sales_cnn.config import SalesCNNConfig, for_weekly
from dmeta.sales_cnn.frames import GroupTotals, SalesPanel, split_ends
from dmeta.sales_cnn.pipeline import (
    METHODS,
    NETWORKS,
    Prepared,
    forecast_network,
    prepare,
    region_mse,
)
from dmeta.sales_cnn.synthetic import synthetic_panel
from dmeta.train.harness import Cell, hp_rows, shared_choice, tune, tuning_memo

NAME = "sales_cnn"
SWEEPS = {  # sweep name -> (config field of its values, axis label)
    "horizon": ("sweep_horizons", "target interval length k (periods)"),
    "length": ("sweep_lengths", "Data Frame length T (periods)"),
    "beta": ("sweep_betas", "weight decay beta (per day)"),
}
KEEP_PREPARED = 2  # prepared frame sets kept in memory (a size's test and validation sets)
log = logging.getLogger(__name__)


CJ_INDICATORS = ("quantity", "sales_value", "retail_disc", "coupon_disc", "baskets", "households")
CJ_EXCLUDED_DEPARTMENTS = ("FUEL", "MISCELLANEOUS")  # quantity in gallons / kiosk counts
CJ_AGGREGATION = {  # indicator -> (transaction column, aggregation) over a day's rows
    "quantity": ("quantity", "sum"),
    "sales_value": ("sales_value", "sum"),
    "retail_disc": ("retail_disc", "sum"),
    "coupon_disc": ("coupon_disc", "sum"),
    "baskets": ("basket_id", "nunique"),
    "households": ("household_id", "nunique"),
}


def load_panel(
    spec: str, *, n_items: int | None = None, n_regions: int = 5
) -> tuple[str, SalesPanel]:
    """(dataset name, panel) for a ``--data`` spec; ``n_items`` / ``n_regions`` choose
    Complete Journey's products and stores (``from_completejourney``)."""
    data = parse_data_spec(spec)
    if data.name == "synthetic":
        return data.name, synthetic_panel(0, n_regions=5, n_items=30, n_periods=130)[0]
    if data.name == "completejourney":
        src = LOADERS[data.name](data.path)
        return data.name, from_completejourney(src, n_items=n_items, n_regions=n_regions)
    if data.name in ("frat", "cainiao", "itemlog"):
        return data.name, from_itemlog(LOADERS[data.name](data.path))
    raise DataError(f"--data {spec!r}: unknown dataset {data.name!r} for {NAME}")


def from_itemlog(src: ItemLog) -> SalesPanel:
    """Dense panel of a checked item-region log; periods without a record are zeros
    (logged). Items are in id order (numeric for integer ids), regions in text order."""
    log, indicators = src.log, list(src.indicators)
    items = _csv.id_order(log["item_id"])
    regions = np.sort(log["region_id"].astype(str).unique())
    dates = pd.date_range(log["ds"].min(), log["ds"].max(), freq=src.freq)
    t = dates.get_indexer(log["ds"])
    _csv.check(log, src.path, "ds", t < 0, f"is off the {src.freq!r} calendar")
    r = np.searchsorted(regions, log["region_id"].astype(str).to_numpy())
    i = pd.Index(items).get_indexer(log["item_id"])
    x = np.zeros((len(regions), len(items), len(dates), len(indicators)), np.float32)
    x[r, i, t] = log[indicators].to_numpy(np.float32)
    missing = x.shape[0] * x.shape[1] * x.shape[2] - len(log)
    if missing:
        log_warning = f"{missing} (region, item, period) cells without a record filled with 0"
        _csv.repair(src.path, log_warning)
    attrs = src.attributes.set_index("item_id").loc[items]
    return SalesPanel(
        x=x,
        brand=pd.factorize(attrs["brand"])[0].astype(np.int32),
        category=pd.factorize(attrs["category"])[0].astype(np.int32),
        target=indicators.index(src.target),
        regions=tuple(regions),
        items=tuple(str(v) for v in items),
        indicators=tuple(indicators),
        dates=dates.to_numpy(),
    )


def _cj_stores(tx: pd.DataFrame, n_regions: int) -> pd.DataFrame:
    """Complete Journey rows of the ``n_regions`` stores with the most baskets, fuel and
    kiosk departments left out, up to the last full day (a last day with under half the
    median day's baskets is cut: the data end in the first hours of 2018-01-01). ``tx``
    has ``department`` and ``ds`` (the day)."""
    days = tx.groupby("ds")["basket_id"].nunique()
    while len(days) > 1 and days.iloc[-1] < 0.5 * days.median():
        days = days.iloc[:-1]
    tx = tx[tx["ds"] <= days.index[-1]]
    tx = tx[~tx["department"].isin(CJ_EXCLUDED_DEPARTMENTS)]
    stores = tx.groupby("store_id")["basket_id"].nunique().nlargest(n_regions).index
    return tx[tx["store_id"].isin(stores)]


def _cj_top_products(tx: pd.DataFrame, n_items: int | None) -> pd.DataFrame:
    """The rows of the ``n_items`` products with the most baskets in ``tx`` (None: all)."""
    if n_items is None:
        return tx
    top = tx.groupby("product_id")["basket_id"].nunique().nlargest(n_items).index
    return tx[tx["product_id"].isin(top)]


def _cj_daily(tx: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The ``CJ_INDICATORS`` of the transactions ``tx`` per ``keys`` (and ``_line``, the
    first file line): quantities, sales and discounts summed, baskets and households
    counted once each (distinct ids)."""
    return tx.groupby(keys).agg(**CJ_AGGREGATION, _line=("_line", "min")).reset_index()


def _dense(table: pd.DataFrame, axes: list[tuple[str, pd.Index]]) -> np.ndarray:
    """f32[*axis lengths, D] the ``CJ_INDICATORS`` of ``table`` at the labels of each
    (column, labels) axis; 0 where ``table`` has no row, rows off the labels left out."""
    codes = [labels.get_indexer(table[column]) for column, labels in axes]
    on = np.logical_and.reduce([c >= 0 for c in codes])
    out = np.zeros((*(len(labels) for _, labels in axes), len(CJ_INDICATORS)), np.float32)
    out[tuple(c[on] for c in codes)] = table.loc[on, list(CJ_INDICATORS)].to_numpy(np.float32)
    return out


def _cj_totals(tx: pd.DataFrame, attributes: pd.DataFrame, panel: SalesPanel) -> GroupTotals:
    """The brand, category and store series of ``panel`` over all rows ``tx`` of its
    stores (every product, not only the panel's), per day; ``attributes``: ``item_id,
    brand, category`` of every product. Baskets and households count the distinct baskets
    / households that bought any product of the brand, category or store that day (not
    the sum over products)."""
    named = attributes.assign(item_id=attributes["item_id"].astype(str)).set_index("item_id")
    tx = tx.assign(
        store_id=tx["store_id"].astype(str),
        **{c: tx["product_id"].astype(str).map(named[c]) for c in ("brand", "category")},
    )
    stores, days = pd.Index(panel.regions), pd.DatetimeIndex(panel.dates)
    series = {}
    for level, codes in (("brand", panel.brand), ("category", panel.category)):
        names = np.empty(codes.max() + 1, object)
        names[codes] = named.loc[list(panel.items), level].to_numpy()
        daily = _cj_daily(tx, ["store_id", level, "ds"])
        series[level] = _dense(
            daily, [("store_id", stores), (level, pd.Index(names)), ("ds", days)]
        )
    region = _dense(_cj_daily(tx, ["store_id", "ds"]), [("store_id", stores), ("ds", days)])
    return GroupTotals(brand=series["brand"], category=series["category"], region=region)


def from_completejourney(
    src: completejourney.CompleteJourney, *, n_items: int | None = 100, n_regions: int = 5
) -> SalesPanel:
    """Product x store x day of the ``n_regions`` stores with the most baskets
    (``_cj_stores``, fuel and kiosk departments left out) and, in them, the ``n_items``
    products with the most baskets; indicators: quantity (the target), sales value, retail
    and coupon discounts, baskets, households. Brand = ``manufacturer_id``, category =
    ``product_category``. The panel's ``totals`` are the brand, category and store series
    over every product of the stores (``_cj_totals``; baskets and households there count
    distinct baskets and households)."""
    ids = ("household_id", "store_id", "basket_id", "product_id")
    tx = src.transactions.assign(**{c: _csv.natural_ids(src.transactions[c]) for c in ids})
    products = src.products.assign(product_id=_csv.natural_ids(src.products["product_id"]))
    known = tx["product_id"].isin(products["product_id"])
    if not known.all():
        _csv.repair(src.path, f"{int((~known).sum())} rows whose product_id has no product "
                              "record dropped")  # fmt: skip
    tx = tx[known].assign(ds=tx["timestamp"].dt.floor("D"))
    tx = tx.merge(products[["product_id", "department"]], on="product_id", how="left")
    tx = _cj_stores(tx, n_regions)
    log = _cj_daily(_cj_top_products(tx, n_items), ["product_id", "store_id", "ds"]).rename(
        columns={"product_id": "item_id", "store_id": "region_id"}
    )
    attributes = products[["product_id", "manufacturer_id", "product_category"]].set_axis(
        ["item_id", "brand", "category"], axis=1
    )
    src_log = checked(log, attributes, indicators=CJ_INDICATORS, target="quantity", freq="D",
                      source=src.path)  # fmt: skip
    panel = from_itemlog(src_log)
    return dataclasses.replace(panel, totals=_cj_totals(tx, src_log.attributes, panel))


def group_rows(panel: SalesPanel, choice: str) -> SalesPanel:
    """The panel whose Data Frames' brand, category and region rows are ``choice``:
    ``"totals"``, its ``totals`` over every product of its regions (the sums over its own
    items where it has none: Frat, synthetic, itemlog, cainiao), or ``"selected"``, the
    sums over its items (``totals`` dropped)."""
    if choice not in ("totals", "selected"):
        raise ValueError(f"data.group_rows={choice!r}; use 'totals' or 'selected'")
    return panel if choice == "totals" else dataclasses.replace(panel, totals=None)


def top_regions(panel: SalesPanel, n: int) -> SalesPanel:
    """The ``n`` regions with the largest total sales, largest first."""
    return panel.select_regions(np.argsort(-panel.sales.sum((1, 2)), kind="stable")[:n])


def top_items(panel: SalesPanel, n: int | None) -> SalesPanel:
    """The ``n`` items with the largest total sales over the panel's regions, in panel
    order (None or ``n >= I``: the panel as it is)."""
    if n is None or n >= len(panel.items):
        return panel
    return panel.select_items(np.sort(np.argsort(-panel.sales.sum((0, 2)), kind="stable")[:n]))


def resolve(cfg: SalesCNNConfig, panel: SalesPanel) -> SalesCNNConfig:
    """The config a panel runs with: the ``weekly`` sizes and orders when its periods
    (``data.period_days``, else the panel's date step) are weeks, the daily ones else."""
    days = panel.period_days if cfg.data.period_days is None else cfg.data.period_days
    return for_weekly(cfg) if round(days) == 7 else cfg


def cells(cfg: SalesCNNConfig, methods: tuple[str, ...], seeds: int) -> list[Cell]:
    """Table 1 (chosen methods x seeds), then the sweeps (with CNN+WD+TL among them)."""
    out = [Cell(m, seed, "table1") for seed in range(seeds) for m in METHODS if m in methods]
    if cfg.protocol.sweeps and "CNN+WD+TL" in methods:
        for name, (field, _) in SWEEPS.items():
            for value in getattr(cfg.protocol, field):
                points = range(cfg.protocol.sweep_seeds)
                out += [Cell("CNN+WD+TL", seed, f"{name}={value}") for seed in points]
    return out


def grid(cfg: SalesCNNConfig, method: str) -> dict[str, tuple]:
    """The tuning grid of a Table 1 method (its first point is the configured setting)."""
    t, b = cfg.tuning, cfg.baselines
    if method == "ARIMA":
        return {"arima_lags": (b.arima_lags, *t.arima_lags)}
    if method == "FE+GBRT":
        return {
            "max_depth": (b.gbrt_max_depth, *t.gbrt_max_depth),
            "learning_rate": (b.gbrt_learning_rate, *t.gbrt_learning_rate),
        }
    if method == "Naive":
        return {}
    return {
        "learning_rate": (cfg.train.learning_rate, *t.learning_rate),
        "rate": (cfg.model.rate, *t.rate),
    }


class SalesRun:
    """Computes the cells of one run on one panel (already cut to its top regions; its
    group rows chosen by ``data.group_rows``, ``group_rows``); ``out``, the run folder,
    keeps the choices shared by seeds (``tuning.per_seed`` False)."""

    def __init__(
        self, dataset: str, panel: SalesPanel, cfg: SalesCNNConfig, out: Path | None = None
    ):
        panel = group_rows(panel, cfg.data.group_rows)
        self.dataset, self.panel, self.cfg, self.out = dataset, panel, cfg, out
        log.info("%s: regions %s; %d items %s; %d periods of %g days from %s", dataset,
                 " ".join(panel.regions), len(panel.items), " ".join(panel.items),
                 len(panel.dates), panel.period_days, str(panel.dates[0])[:10])  # fmt: skip
        self._prepared: dict[tuple, Prepared] = {}
        self._fixed: dict[tuple, np.ndarray] = {}  # seed-independent baselines
        self._tuned: dict[tuple[str, int], dict] = {}

    def prepared(self, length: int, horizon: int, *, validation: bool = False) -> Prepared:
        """Frames for (T, k); ``validation``: the panel cut before the test interval, so its
        test end points are the last ``n_test`` before it (used for tuning)."""
        memo = (length, horizon, validation)
        if memo in self._prepared:
            self._prepared[memo] = self._prepared.pop(memo)  # most recently used last
        else:
            while len(self._prepared) >= KEEP_PREPARED:
                del self._prepared[next(iter(self._prepared))]
            d, panel = self.cfg.data, self.panel
            if validation:
                sp = split_ends(
                    len(panel.dates), length=length, horizon=horizon, n_test=d.n_test
                ).sp
                panel = panel.first_periods(sp)
            self._prepared[memo] = prepare(
                panel,
                length=length,
                horizon=horizon,
                n_test=d.n_test,
                train_periods=d.train_periods,
                n_val=d.n_val,
                period_days=d.period_days,
            )
            if not validation:
                data = self._prepared[memo]
                log.info(
                    "train samples per region %s, test %s", np.asarray(data.train.n), data.test_n
                )
        return self._prepared[memo]

    def forecast(
        self, data: Prepared, method: str, seed: int, hp: dict, *, sweep: dict | None = None
    ) -> np.ndarray:
        """Test forecasts f[R, Q] of ``method`` with hyperparameters ``hp``, clipped at 0 for
        every method (sales are not negative; ARIMA's always were); ``sweep``: the training
        options a sweep point replaces (``{"beta": ...}`` or none)."""
        return np.maximum(self._unclipped(data, method, seed, hp, sweep=sweep), 0.0)

    def _unclipped(
        self, data: Prepared, method: str, seed: int, hp: dict, *, sweep: dict | None = None
    ) -> np.ndarray:
        cfg = self.cfg
        if method in NETWORKS:
            train = dataclasses.asdict(cfg.train) | hp | (sweep or {})
            train["shard"] = train.pop("data_parallel")
            # Training keys: Table 1 trains the networks in NETWORKS order, a sweep one alone.
            position = 0 if sweep is not None else NETWORKS.index(method)
            model = cfg.model.kwargs() | {"rate": train.pop("rate", cfg.model.rate)}
            dnn = dataclasses.asdict(cfg.dnn)
            return forecast_network(
                data, method, seed=seed, position=position, model=model, dnn=dnn, **train
            )
        b = cfg.baselines
        gbrt = dict(n_estimators=b.gbrt_estimators, n_jobs=b.gbrt_jobs)
        gbrt |= dict(max_depth=b.gbrt_max_depth, learning_rate=b.gbrt_learning_rate) | hp
        if method == "FE+GBRT":
            return baselines.forecast_baseline(data, method, seed=seed, gbrt=gbrt)
        size = (data.sp, data.horizon, data.test_x.shape[-1])  # which prepared set
        memo = (size, method, tuple(sorted(hp.items())))  # ARIMA and Naive: seed-free
        if memo not in self._fixed:
            lags = hp.get("arima_lags", b.arima_lags)
            self._fixed[memo] = baselines.forecast_baseline(data, method, seed=0, arima_lags=lags)
        return self._fixed[memo]

    def tuned(self, method: str, seed: int) -> dict:
        """The grid point of lowest average validation MSE; the first point without scoring
        when ``tuning.trials`` gives one point. With ``tuning.per_seed`` False the first
        seed of the method to get here tunes and the others reuse its choice
        (``dmeta.train.harness.shared_choice``)."""
        cell, per_seed = Cell(method, seed, "table1"), self.cfg.tuning.per_seed
        return shared_choice(self.out, cell, lambda: self._tune(method, seed), per_seed=per_seed)

    def _tune(self, method: str, seed: int) -> dict:
        points, trials = grid(self.cfg, method), self.cfg.tuning.trials
        if (method, seed) not in self._tuned:
            d = self.cfg.data

            def score(hp: dict) -> float:
                val = self.prepared(d.length, d.horizon, validation=True)
                return float(region_mse(val, self.forecast(val, method, seed, hp)).mean())

            cell, per_seed = Cell(method, seed, "table1"), self.cfg.tuning.per_seed
            memo = tuning_memo(self.out, cell, per_seed=per_seed)
            self._tuned[method, seed] = tune(
                points, score, trials=trials, seed=seed, memo=memo
            ).best
        return self._tuned[method, seed]

    def run_cell(self, cell: Cell) -> list[dict]:
        """Long-schema rows of one cell: MSE per region and ``average`` (Table 1, with the
        chosen hyperparameters), or one averaged row of a sweep point."""
        cfg, keys = self.cfg, dict(dataset=self.dataset, method=cell.method, seed=cell.seed)
        if cell.setting == "table1":
            hp = self.tuned(cell.method, cell.seed)
            data = self.prepared(cfg.data.length, cfg.data.horizon)
            mse = region_mse(data, self.forecast(data, cell.method, cell.seed, hp))
            rows = [dict(keys, group=str(r), value=float(v)) for r, v in zip(data.regions, mse)]
            rows.append(dict(keys, group="average", value=float(np.mean(mse))))
            rows = [dict(r, experiment=NAME, metric="mse") for r in rows]
            return rows + hp_rows(hp, experiment=NAME, group="average", **keys)
        name, text = cell.setting.split("=")
        value = {str(v): v for v in getattr(cfg.protocol, SWEEPS[name][0])}[text]
        size = {"length": cfg.data.length, "horizon": cfg.data.horizon}
        data = self.prepared(**size | ({name: value} if name in size else {}))
        hp = self.tuned(cell.method, cell.seed)  # Table 1's choice for this seed
        sweep = {"beta": value} if name == "beta" else {}
        mse = region_mse(data, self.forecast(data, cell.method, cell.seed, hp, sweep=sweep))
        if name == "horizon":
            mse = mse / value**2  # MSE of the average sales per period (Figure 5)
        row = dict(keys, experiment=f"{NAME}_sweep_{name}", group=cell.setting, metric="mse")
        return [dict(row, value=float(mse.mean()))]
