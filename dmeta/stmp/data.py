"""Region x day panels with date types for STMP, and the arrays its tasks are drawn from.

A ``STMPData`` holds, for regions r = 1..R and days t = 1..D, the target ``y[r, t]``,
which cells were observed, the date type ``date_type[r, t]`` (types ``0..n_regular-1``
are regular days such as weekday / weekend, the rest are festival kinds; regional and
local holidays make the date type region-specific) and static region attributes.

Builders: ``make_synthetic`` (known ground-truth uplift driven by region attributes),
``load_favorita``, ``load_walmart``, ``load_rossmann`` and ``load_table``.
``prepare`` turns a panel into scaled JAX arrays and the (region, date type) cell
index that tasks are sampled from.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from dmeta.data.frames import LINE_OFFSET, DataError
from dmeta.types import Array

logger = logging.getLogger(__name__)

REGULAR_DAILY = ("weekday", "weekend")
FAVORITA_FESTIVALS = (
    "christmas_eve",
    "christmas",
    "new_year",
    "black_friday",
    "cyber_monday",
    "mothers_day",
    "national_holiday",
    "regional_holiday",
    "local_holiday",
    "event",
)  # in priority order: when several apply to a (store, day), the first wins


@dataclasses.dataclass(frozen=True, eq=False)
class STMPData:
    """A region x day panel with date types and static region attributes.

    Attributes:
      y: f64[R, D] target (0 where unobserved).
      observed: bool[R, D] whether ``y`` was observed.
      date_type: i32[R, D] date type index into ``type_names``.
      attrs: f32[R, A] static region attributes (standardized / one-hot).
      dates: the D dates.
      regions: R region names.
      type_names: date type names; the first ``n_regular`` are regular days.
      attr_names: A attribute names.
      n_regular: number of regular date types.
      period: the seasonal skip of the jump-LSTM (7 for daily data).
      truth: ground truth of a synthetic panel (else empty).
    """

    y: np.ndarray
    observed: np.ndarray
    date_type: np.ndarray
    attrs: np.ndarray
    dates: pd.DatetimeIndex
    regions: tuple[str, ...]
    type_names: tuple[str, ...]
    attr_names: tuple[str, ...]
    n_regular: int = 2
    period: int = 7
    truth: dict = dataclasses.field(default_factory=dict)

    @property
    def is_festival(self) -> np.ndarray:
        """bool[R, D] festival days."""
        return self.date_type >= self.n_regular

    @property
    def n_types(self) -> int:
        return len(self.type_names)


def regular_types(dates: pd.DatetimeIndex) -> np.ndarray:
    """i32[D]: 0 on Monday-Friday, 1 on Saturday-Sunday."""
    return (dates.day_of_week.to_numpy() >= 5).astype(np.int32)


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(
    *,
    n_regions: int = 24,
    n_days: int = 3 * 365,
    n_festivals: int = 4,
    n_attrs: int = 3,
    noise: float = 0.05,
    seed: int = 0,
) -> STMPData:
    """Daily panel whose festival uplift is a known function of region attributes.

    ``y[r, t] = level_r * weekly_r(t) * season(t) * uplift[r, f(t)] * noise`` with
    ``log uplift[r, f] = base_f + 0.4 * coef_f . attrs[r]``, so a new region's festival
    uplift is predictable from its attributes. Festival f lasts 1 or 2 days a year.

    Returns:
      ``STMPData`` with ``truth = {"uplift": f64[R, F], "level": f64[R]}``.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2015-01-01", periods=n_days, freq="D")
    attrs = rng.standard_normal((n_regions, n_attrs))
    level = 100.0 * np.exp(0.5 * attrs[:, 0] + 0.2 * rng.standard_normal(n_regions))
    weekend_lift = 1.0 + 0.3 * np.tanh(attrs[:, 1 % n_attrs])
    base = np.linspace(0.3, 1.0, n_festivals)
    coef = rng.standard_normal((n_festivals, n_attrs))
    uplift = np.exp(base[None, :] + 0.4 * attrs @ coef.T)  # [R, F]

    doy = dates.day_of_year.to_numpy()
    date_type = np.broadcast_to(regular_types(dates), (n_regions, n_days)).copy()
    fest_of_day = np.full(n_days, -1)
    for f in range(n_festivals):
        start = 40 + f * (300 // max(n_festivals, 1))
        fest_of_day[(doy >= start) & (doy < start + 1 + f % 2)] = f
    is_fest = fest_of_day >= 0
    date_type[:, is_fest] = 2 + fest_of_day[is_fest]

    weekly = np.where(date_type == 1, weekend_lift[:, None], 1.0)
    season = 1.0 + 0.1 * np.sin(2 * np.pi * doy / 365.0)
    lift = np.ones((n_regions, n_days))
    lift[:, is_fest] = uplift[:, fest_of_day[is_fest]]
    eps = np.exp(noise * rng.standard_normal((n_regions, n_days)))
    y = level[:, None] * weekly * season[None, :] * lift * eps
    return STMPData(
        y=y,
        observed=np.ones_like(y, dtype=bool),
        date_type=date_type.astype(np.int32),
        attrs=attrs.astype(np.float32),
        dates=dates,
        regions=tuple(f"r{i}" for i in range(n_regions)),
        type_names=REGULAR_DAILY + tuple(f"festival{f}" for f in range(n_festivals)),
        attr_names=tuple(f"a{i}" for i in range(n_attrs)),
        truth={"uplift": uplift, "level": level},
    )


# ----------------------------------------------------------------------------- input checks


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    df = pd.read_csv(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def _bad_rows(source: Path, column: str, bad: np.ndarray, values: pd.Series, what: str) -> None:
    """Raises DataError naming file, column and the first bad lines when ``bad`` has any."""
    idx = np.flatnonzero(np.asarray(bad))
    if idx.size:
        shown = ", ".join(f"line {i + LINE_OFFSET} ({values.iloc[i]!r})" for i in idx[:5])
        more = f" and {idx.size - 5} more" if idx.size > 5 else ""
        raise DataError(f"{source}: column {column!r} {what}: {shown}{more}")


def _dates(df: pd.DataFrame, column: str, source: Path) -> pd.Series:
    """Parses ISO (YYYY-MM-DD) or US (M/D/YYYY) dates; bad ones raise DataError."""
    raw = df[column].astype(str)
    fmt = "%m/%d/%Y" if raw.str.contains("/").mean() > 0.5 else "%Y-%m-%d"
    parsed = pd.to_datetime(raw, format=fmt, errors="coerce")
    _bad_rows(source, column, parsed.isna().to_numpy(), raw, f"is not a {fmt} date")
    return parsed


def _numbers(df: pd.DataFrame, column: str, source: Path, *, nonneg: bool = True) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    _bad_rows(source, column, ~np.isfinite(values), df[column], "is not a number")
    if nonneg:
        _bad_rows(source, column, values < 0, df[column], "is negative")
    return values


def _one_hot(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    parts = [pd.get_dummies(frame[c].astype(str), prefix=c, dtype=np.float32) for c in columns]
    onehot = pd.concat(parts, axis=1)
    return onehot.to_numpy(np.float32), tuple(onehot.columns)


def _dense(
    ids: np.ndarray,
    dates: pd.Series,
    values: np.ndarray,
    regions: list,
    source: Path,
    column: str,
    freq: str = "D",
) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
    """Long (id, date, value) rows -> dense y f64[R, D], observed bool[R, D], dates at freq."""
    key = pd.DataFrame({"id": ids, "ds": dates})
    dup = key.duplicated(keep="first").to_numpy()
    _bad_rows(source, column, dup, key["id"].astype(str) + " " + key["ds"].astype(str), "repeats")
    all_dates = pd.date_range(dates.min(), dates.max(), freq=freq)
    r = pd.Index(regions).get_indexer(ids)
    t = all_dates.get_indexer(dates)
    off = ~np.isin(dates.to_numpy(), all_dates.to_numpy())
    _bad_rows(source, column, off, dates.astype(str), f"is off the {freq} calendar")
    y = np.zeros((len(regions), len(all_dates)))
    observed = np.zeros_like(y, dtype=bool)
    y[r, t] = values
    observed[r, t] = True
    return y, observed, all_dates


# ----------------------------------------------------------------------------- favorita


def _favorita_kind(row) -> str | None:
    """Festival kind of one holidays_events row (None: not a festival for any store)."""
    desc, kind, locale = str(row.description), str(row.type), str(row.locale)
    desc = desc.removeprefix("Traslado ")  # a transferred holiday keeps its kind
    if kind == "Work Day" or row.transferred:
        return None
    if desc == "Navidad-1":
        return "christmas_eve"
    for prefix, name in (
        ("Navidad", "christmas"),
        ("Primer dia del ano", "new_year"),
        ("Black Friday", "black_friday"),
        ("Cyber Monday", "cyber_monday"),
        ("Dia de la Madre", "mothers_day"),
    ):
        if desc.startswith(prefix):
            return name
    if kind == "Event":
        return "event"
    return {"National": "national_holiday", "Regional": "regional_holiday"}.get(
        locale, "local_holiday"
    )


def load_favorita(path: str | Path) -> STMPData:
    """Favorita stores as regions, daily transactions as target, holidays as date types.

    Reads ``stores.csv`` (store_nbr, city, state, type, cluster), ``transactions.csv``
    (date, store_nbr, transactions) and ``holidays_events.csv`` (date, type, locale,
    locale_name, description, transferred). National holidays apply to every store,
    regional ones to the stores of that state, local ones to the stores of that city;
    transferred holidays are skipped (their ``Transfer`` row marks the day off) and
    ``Work Day`` rows are regular days. Days without a transactions row are unobserved.

    Raises:
      DataError: a bad value, naming the file, the column and the lines.
    """
    path = Path(path)
    stores = _read_csv(path / "stores.csv", ("store_nbr", "city", "state", "type", "cluster"))
    stores_src = path / "stores.csv"
    stores["store_nbr"] = _numbers(stores, "store_nbr", stores_src).astype(int)
    stores = stores.sort_values("store_nbr").reset_index(drop=True)
    attrs, attr_names = _one_hot(stores, ["city", "state", "type", "cluster"])

    tx_src = path / "transactions.csv"
    tx = _read_csv(tx_src, ("date", "store_nbr", "transactions"))
    store_ids = _numbers(tx, "store_nbr", tx_src).astype(int)
    unknown = ~np.isin(store_ids, stores["store_nbr"].to_numpy())
    _bad_rows(tx_src, "store_nbr", unknown, tx["store_nbr"], "is not a store of stores.csv")
    y, observed, dates = _dense(
        store_ids,
        _dates(tx, "date", tx_src),
        _numbers(tx, "transactions", tx_src),
        list(stores["store_nbr"]),
        tx_src,
        "date",
    )

    hol_src = path / "holidays_events.csv"
    hol = _read_csv(
        hol_src, ("date", "type", "locale", "locale_name", "description", "transferred")
    )
    hol["date"] = _dates(hol, "date", hol_src)
    bad_locale = ~hol["locale"].isin(["National", "Regional", "Local"]).to_numpy()
    _bad_rows(hol_src, "locale", bad_locale, hol["locale"], "is not National/Regional/Local")
    flag = hol["transferred"].astype(str).str.upper()
    _bad_rows(hol_src, "transferred", ~flag.isin(["TRUE", "FALSE"]).to_numpy(), flag, "not a bool")
    hol["transferred"] = flag == "TRUE"

    type_names = REGULAR_DAILY + FAVORITA_FESTIVALS
    priority = {name: i for i, name in enumerate(FAVORITA_FESTIVALS)}
    best = np.full(y.shape, len(FAVORITA_FESTIVALS))  # lower is higher priority
    city, state = stores["city"].to_numpy(), stores["state"].to_numpy()
    for row in hol.itertuples(index=False):
        kind = _favorita_kind(row)
        t = dates.get_indexer([row.date])[0]
        if kind is None or t < 0:
            continue
        if row.locale == "National":
            where = np.ones(len(stores), bool)
        else:
            where = (state if row.locale == "Regional" else city) == row.locale_name
        best[where, t] = np.minimum(best[where, t], priority[kind])
    festival = best < len(FAVORITA_FESTIVALS)
    date_type = np.where(festival, best + len(REGULAR_DAILY), regular_types(dates)[None, :])
    return STMPData(
        y=y,
        observed=observed,
        date_type=date_type.astype(np.int32),
        attrs=attrs,
        dates=dates,
        regions=tuple(f"store{s}" for s in stores["store_nbr"]),
        type_names=type_names,
        attr_names=attr_names,
    )


# ----------------------------------------------------------------------------- walmart

WALMART_HOLIDAYS = {2: "super_bowl", 9: "labor_day", 11: "thanksgiving", 12: "christmas"}


def load_walmart(path: str | Path) -> STMPData:
    """Walmart stores as regions, weekly sales summed over departments, holiday weeks.

    Reads ``train.csv.zip`` (Store, Dept, Date, Weekly_Sales, IsHoliday) and
    ``stores.csv`` (Store, Type, Size). Holiday weeks are named by month (Super Bowl,
    Labor Day, Thanksgiving, Christmas); the regular type is "week". Negative
    department rows (returns) are kept; a negative store-week total raises.
    """
    path = Path(path)
    stores_src = path / "stores.csv"
    stores = _read_csv(stores_src, ("Store", "Type", "Size"))
    stores["Store"] = _numbers(stores, "Store", stores_src).astype(int)
    size = np.log(_numbers(stores, "Size", stores_src) + 1.0)
    stores = stores.sort_values("Store").reset_index(drop=True)
    onehot, names = _one_hot(stores, ["Type"])
    attrs = np.c_[onehot, (size - size.mean()) / (size.std() + 1e-9)].astype(np.float32)

    src = path / "train.csv.zip"
    train = _read_csv(src, ("Store", "Dept", "Date", "Weekly_Sales", "IsHoliday"))
    train["Date"] = _dates(train, "Date", src)
    train["Weekly_Sales"] = _numbers(train, "Weekly_Sales", src, nonneg=False)
    unknown = ~train["Store"].isin(stores["Store"]).to_numpy()
    _bad_rows(src, "Store", unknown, train["Store"], "is not a store of stores.csv")
    weekly = train.groupby(["Store", "Date"], as_index=False).agg(
        y=("Weekly_Sales", "sum"), holiday=("IsHoliday", "max")
    )
    _bad_rows(src, "Weekly_Sales", (weekly["y"] < 0).to_numpy(), weekly["Store"],
              "sums to a negative store-week total for store")  # fmt: skip
    y, observed, dates = _dense(weekly["Store"].to_numpy(), weekly["Date"], weekly["y"].to_numpy(),
                                list(stores["Store"]), src, "Date", freq="W-FRI")  # fmt: skip
    holiday_dates = weekly.loc[weekly["holiday"].astype(bool), "Date"].unique()
    names_by_month = ("week",) + tuple(WALMART_HOLIDAYS.values())
    date_type = np.zeros(len(dates), np.int32)
    for day in holiday_dates:
        month = pd.Timestamp(day).month
        if month not in WALMART_HOLIDAYS:
            raise DataError(
                f"{src}: column 'IsHoliday' marks {day} (month {month}), not a known holiday"
            )
        date_type[dates.get_loc(day)] = names_by_month.index(WALMART_HOLIDAYS[month])
    return STMPData(
        y=y,
        observed=observed,
        date_type=np.broadcast_to(date_type, y.shape).copy(),
        attrs=attrs,
        dates=dates,
        regions=tuple(f"store{s}" for s in stores["Store"]),
        type_names=names_by_month,
        attr_names=names + ("log_size",),
        n_regular=1,
        period=4,
    )


# ----------------------------------------------------------------------------- rossmann

ROSSMANN_FESTIVALS = ("public_holiday", "easter", "christmas", "promo")
ROSSMANN_COLUMNS = ("Store", "Date", "Sales", "Open", "Promo", "StateHoliday", "StoreType",
                    "Assortment", "CompetitionDistance", "Promo2")  # fmt: skip


def load_rossmann(path: str | Path, *, max_stores: int | None = None) -> STMPData:
    """Rossmann stores as regions, daily sales, state holidays and promo days as date types.

    Reads ``train_clean.parquet`` (Kaggle train merged with store.csv). Closed days
    (Open = 0) are unobserved. State holidays a/b/c are public holiday / Easter /
    Christmas; promo days are a date type too (holidays win over promo).
    """
    src = Path(path) / "train_clean.parquet"
    if not src.exists():
        raise DataError(f"{src}: file not found")
    df = pd.read_parquet(src)
    missing = [c for c in ROSSMANN_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{src}: missing column(s) {missing}")
    if max_stores is not None:
        df = df[df["Store"] <= sorted(df["Store"].unique())[max_stores - 1]].reset_index(drop=True)
    holiday = df["StateHoliday"].astype(str)
    bad = ~holiday.isin(["0", "a", "b", "c"]).to_numpy()
    _bad_rows(src, "StateHoliday", bad, holiday, "is not one of 0/a/b/c")
    sales = _numbers(df, "Sales", src)
    open_ = df["Open"].to_numpy() == 1
    stores = df.drop_duplicates("Store").sort_values("Store").reset_index(drop=True)
    keep = open_
    y, observed, dates = _dense(df["Store"].to_numpy()[keep], df["Date"][keep], sales[keep],
                                list(stores["Store"]), src, "Date")  # fmt: skip
    kind = np.select(
        [holiday == "a", holiday == "b", holiday == "c", df["Promo"].to_numpy() == 1],
        [2, 3, 4, 5],
        default=-1,
    )
    date_type = np.broadcast_to(regular_types(dates), y.shape).copy()
    r = pd.Index(stores["Store"]).get_indexer(df["Store"])
    t = dates.get_indexer(df["Date"])
    fest = kind >= 0
    date_type[r[fest], t[fest]] = kind[fest]
    onehot, names = _one_hot(stores, ["StoreType", "Assortment", "Promo2"])
    dist = np.log1p(stores["CompetitionDistance"].to_numpy(float))
    attrs = np.c_[onehot, (dist - dist.mean()) / (dist.std() + 1e-9)].astype(np.float32)
    return STMPData(
        y=y,
        observed=observed,
        date_type=date_type.astype(np.int32),
        attrs=attrs,
        dates=dates,
        regions=tuple(f"store{s}" for s in stores["Store"]),
        type_names=REGULAR_DAILY + ROSSMANN_FESTIVALS,
        attr_names=names + ("log_competition_distance",),
    )


# ----------------------------------------------------------------------------- table


def load_table(path: str | Path) -> STMPData:
    """Any daily panel in three CSV files under ``path``.

    - ``series.csv``: ``unique_id, ds, y`` (one row per observed region-day);
    - ``regions.csv``: ``unique_id`` plus attribute columns (numeric ones standardized,
      others one-hot);
    - ``calendar.csv``: ``ds, date_type`` plus an optional ``unique_id`` column for
      region-specific days (empty: all regions). Other days are weekday / weekend.
    """
    path = Path(path)
    reg_src, ser_src, cal_src = path / "regions.csv", path / "series.csv", path / "calendar.csv"
    regions = _read_csv(reg_src, ("unique_id",))
    regions["unique_id"] = regions["unique_id"].astype(str)
    _bad_rows(reg_src, "unique_id", regions["unique_id"].duplicated().to_numpy(),
              regions["unique_id"], "repeats")  # fmt: skip
    parts, names = [], []
    for col in regions.columns.drop("unique_id"):
        values = pd.to_numeric(regions[col], errors="coerce")
        if values.notna().all():
            v = values.to_numpy(float)
            parts.append(((v - v.mean()) / (v.std() + 1e-9))[:, None])
            names.append(col)
        else:
            onehot, more = _one_hot(regions, [col])
            parts.append(onehot)
            names.extend(more)
    attrs = np.concatenate(parts, axis=1) if parts else np.zeros((len(regions), 0))

    series = _read_csv(ser_src, ("unique_id", "ds", "y"))
    ids = series["unique_id"].astype(str)
    unknown = ~ids.isin(regions["unique_id"]).to_numpy()
    _bad_rows(ser_src, "unique_id", unknown, ids, "is not in regions.csv")
    y, observed, dates = _dense(ids.to_numpy(), _dates(series, "ds", ser_src),
                                _numbers(series, "y", ser_src), list(regions["unique_id"]),
                                ser_src, "ds")  # fmt: skip

    cal = _read_csv(cal_src, ("ds", "date_type"))
    cal["ds"] = _dates(cal, "ds", cal_src)
    festivals = tuple(sorted(cal["date_type"].astype(str).unique()))
    clash = [f for f in festivals if f in REGULAR_DAILY]
    if clash:
        raise DataError(f"{cal_src}: column 'date_type' uses reserved name(s) {clash}")
    type_names = REGULAR_DAILY + festivals
    date_type = np.broadcast_to(regular_types(dates), y.shape).copy()
    region_of = cal["unique_id"].astype(str) if "unique_id" in cal.columns else None
    for i, row in enumerate(cal.itertuples(index=False)):
        t = dates.get_indexer([row.ds])[0]
        if t < 0:
            continue
        kind = type_names.index(str(row.date_type))
        if region_of is None or pd.isna(cal["unique_id"].iloc[i]):
            date_type[:, t] = kind
        else:
            r = regions.index[regions["unique_id"] == region_of.iloc[i]]
            if r.size == 0:
                raise DataError(f"{cal_src}: column 'unique_id' line {i + LINE_OFFSET}: "
                                f"{region_of.iloc[i]!r} is not in regions.csv")  # fmt: skip
            date_type[r, t] = kind
    return STMPData(
        y=y,
        observed=observed,
        date_type=date_type.astype(np.int32),
        attrs=attrs.astype(np.float32),
        dates=dates,
        regions=tuple(regions["unique_id"]),
        type_names=type_names,
        attr_names=tuple(names),
    )


# ----------------------------------------------------------------------------- JAX arrays


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Arrays:
    """A scaled panel on device.

    Attributes:
      ys: f32[R, D] target divided by the region's training mean (0 where unobserved).
      obs: f32[R, D] 1 where observed.
      fest: f32[R, D] 1 on festival days.
      dtype: i32[R, D] date type.
      dow: i32[D] day of week (0 = Monday).
      attrs: f32[R, A] static region attributes.
    """

    ys: Array
    obs: Array
    fest: Array
    dtype: Array
    dow: Array
    attrs: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CellIndex:
    """Padded day lists that tasks and context sets are sampled from.

    Attributes:
      cell_days: i32[R, Dt, M] days of each (region, date type) cell.
      cell_count: i32[R, Dt] number of valid entries in ``cell_days``.
      region_days: i32[R, N] days of each region (any date type).
      region_count: i32[R].
      type_pairs: i32[Dt, P] flattened ``r * D + t`` of each date type (any region).
      type_count: i32[Dt].
    """

    cell_days: Array
    cell_count: Array
    region_days: Array
    region_count: Array
    type_pairs: Array
    type_count: Array


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A panel ready for training and evaluation.

    Attributes:
      data: the source panel (regions without training data removed).
      arrays: scaled ``Arrays``.
      scale: f64[R] training mean of each region (``y = ys * scale``).
      train: bool[R, D] targets usable for training (and context sets).
      test: bool[R, D] targets to evaluate.
      index: ``CellIndex`` over ``train``.
    """

    data: STMPData
    arrays: Arrays
    scale: np.ndarray
    train: np.ndarray
    test: np.ndarray
    index: CellIndex


def _pad_lists(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(x) for x in lists], np.int32)
    out = np.zeros((len(lists), max(int(counts.max()), 1)), np.int32)
    for i, x in enumerate(lists):
        out[i, : len(x)] = x
    return out, counts


def build_index(mask: np.ndarray, date_type: np.ndarray, n_types: int) -> CellIndex:
    """``CellIndex`` of the True entries of ``mask: bool[R, D]``."""
    n_regions, n_days = mask.shape
    cells = [np.flatnonzero(mask[r] & (date_type[r] == d)) for r in range(n_regions)
             for d in range(n_types)]  # fmt: skip
    cell_days, cell_count = _pad_lists(cells)
    region_days, region_count = _pad_lists([np.flatnonzero(m) for m in mask])
    flat_mask, flat_type = mask.ravel(), date_type.ravel()
    type_pairs, type_count = _pad_lists(
        [np.flatnonzero(flat_mask & (flat_type == d)) for d in range(n_types)]
    )
    return CellIndex(
        cell_days=jnp.asarray(cell_days.reshape(n_regions, n_types, -1)),
        cell_count=jnp.asarray(cell_count.reshape(n_regions, n_types)),
        region_days=jnp.asarray(region_days),
        region_count=jnp.asarray(region_count),
        type_pairs=jnp.asarray(type_pairs),
        type_count=jnp.asarray(type_count),
    )


def one_week_of_festivals(data: STMPData, mask: np.ndarray) -> np.ndarray:
    """bool[R, D]: ``mask`` with festival days kept only in its densest 7-day window.

    The window is the one holding the most festival (region, day) targets of ``mask``
    (the latest on ties), e.g. a Christmas week: the "one week of festival data" setting.
    """
    fest = (mask & data.is_festival).sum(axis=0)
    weekly = np.convolve(fest, np.ones(7), mode="full")[6:]  # weekly[t] = sum fest[t:t+7]
    start = int(len(weekly) - 1 - np.argmax(weekly[::-1]))
    keep = np.zeros(mask.shape[1], bool)
    keep[start : start + 7] = True
    logger.info("one festival week kept: %s..%s", data.dates[start], data.dates[start + 6])
    return mask & (~data.is_festival | keep[None, :])


def prepare(
    data: STMPData,
    *,
    cutoff: int,
    window: int,
    test_end: int | None = None,
    one_festival_week: bool = False,
) -> Prepared:
    """Scales a panel by training means and marks train / test targets.

    A target (r, t) is valid when observed, ``t >= window`` and at least half its
    input window is observed; training targets have ``t < cutoff``, test targets
    ``cutoff <= t < test_end``. Regions with fewer than ``window`` training targets
    are dropped (logged). Unobserved inputs are zeros with an ``obs`` flag of 0.

    Args:
      data: the panel.
      cutoff: first test day index.
      window: input window length L.
      test_end: end of the test period (default: the last day).
      one_festival_week: keep festival training targets of one week only.
    """
    n_days = data.y.shape[1]
    test_end = n_days if test_end is None else test_end
    obs = data.observed
    cum = np.concatenate([np.zeros((obs.shape[0], 1)), np.cumsum(obs, axis=1)], axis=1)
    t = np.arange(n_days)
    in_window = cum[:, t] - cum[:, np.maximum(t - window, 0)]
    valid = obs & (t >= window)[None, :] & (in_window >= window / 2)
    train = valid & (t < cutoff)[None, :]
    keep = train.sum(axis=1) >= window
    if not keep.all():
        dropped = [data.regions[i] for i in np.flatnonzero(~keep)]
        logger.warning("dropped %d region(s) with < %d training days: %s", len(dropped),
                       window, dropped)  # fmt: skip
        data = dataclasses.replace(
            data,
            y=data.y[keep],
            observed=obs[keep],
            date_type=data.date_type[keep],
            attrs=data.attrs[keep],
            regions=tuple(np.asarray(data.regions)[keep]),
        )
        valid, train = valid[keep], train[keep]
    test = valid & ((t >= cutoff) & (t < test_end))[None, :]
    if one_festival_week:
        train = one_week_of_festivals(data, train)
    scale = np.array([data.y[r, train[r]].mean() for r in range(len(data.regions))])
    arrays = Arrays(
        ys=jnp.asarray(np.where(data.observed, data.y / scale[:, None], 0.0), jnp.float32),
        obs=jnp.asarray(data.observed, jnp.float32),
        fest=jnp.asarray(data.is_festival, jnp.float32),
        dtype=jnp.asarray(data.date_type),
        dow=jnp.asarray(data.dates.day_of_week.to_numpy(), jnp.int32),
        attrs=jnp.asarray(data.attrs, jnp.float32),
    )
    index = build_index(train, data.date_type, data.n_types)
    return Prepared(data, arrays, scale, train, test, index)


def window(arrays: Arrays, r: Array, t: Array, length: int) -> Array:
    """Input window of target (r, t): f32[L, 3] (scaled y, observed, festival) for t-L..t-1."""
    stacked = jnp.stack([arrays.ys, arrays.obs, arrays.fest], axis=-1)  # [R, D, 3]
    return jax.lax.dynamic_slice(stacked[r], (t - length, 0), (length, 3))


def uplift(arrays: Arrays, r: Array, t: Array, period: int) -> Array:
    """Scaled y[r, t] minus the observed mean of the previous ``period`` days: f32[]."""
    ys = jax.lax.dynamic_slice(arrays.ys[r], (t - period,), (period,))
    obs = jax.lax.dynamic_slice(arrays.obs[r], (t - period,), (period,))
    return arrays.ys[r, t] - jnp.sum(ys * obs) / jnp.maximum(jnp.sum(obs), 1.0)
