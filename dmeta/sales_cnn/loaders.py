"""Sales panels from synthetic data and from real item x region logs.

Every loader ends in ``panel_from_long``: a generic item-region log
(``item_id, region_id, ds, indicators...``) plus an attributes table
(``item_id, brand, category``) becomes a dense ``SalesPanel``; periods without
a record are filled with zeros (a documented repair, logged once per call).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import DataError
from dmeta.sales_cnn.frames import SalesPanel

logger = logging.getLogger(__name__)

MAX_SHOWN = 5
KEYS = ("item_id", "region_id", "ds")
ATTRIBUTES = ("item_id", "brand", "category")

FRAT_INDICATORS = (
    "units", "visits", "hhs", "spend", "price", "base_price", "feature", "display", "tpr_only",
)  # fmt: skip
CAINIAO_INDICATORS = (
    "pv_ipv", "pv_uv", "cart_ipv", "cart_uv", "collect_uv", "num_gmv", "amt_gmv", "qty_gmv",
    "unum_gmv", "amt_alipay", "num_alipay", "qty_alipay", "unum_alipay", "ztc_pv_ipv",
    "tbk_pv_ipv", "ss_pv_ipv", "jhs_pv_ipv", "ztc_pv_uv", "tbk_pv_uv", "ss_pv_uv", "jhs_pv_uv",
    "num_alipay_njhs", "amt_alipay_njhs", "qty_alipay_njhs", "unum_alipay_njhs",
)  # fmt: skip
CAINIAO_IDS = ("date", "item_id", "cate_id", "cate_level_id", "brand_id", "supplier_id")
CJ_INDICATORS = ("quantity", "sales_value", "retail_disc", "coupon_disc", "baskets", "households")


def _lines(bad: pd.Series, line_offset: int) -> str:
    """``lines 2, 5, ...`` for the True positions of ``bad`` (file line numbers)."""
    pos = np.flatnonzero(bad.to_numpy())
    shown = ", ".join(str(p + line_offset) for p in pos[:MAX_SHOWN])
    more = f" and {len(pos) - MAX_SHOWN} more" if len(pos) > MAX_SHOWN else ""
    return f"line{'s' if len(pos) > 1 else ''} {shown}{more}"


def _require(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")


def _numeric(
    df: pd.DataFrame, columns: Sequence[str], source: str, line_offset: int
) -> pd.DataFrame:
    """Columns as float64; non-numeric or empty cells raise naming file, column and lines."""
    out = df.copy()
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0.0))
        if bad.any():
            raw = df[col][bad].iloc[0]
            raise DataError(
                f"{source}: column {col!r} is empty or not a finite number at "
                f"{_lines(bad, line_offset)} (first value {raw!r})"
            )
        out[col] = values.astype(np.float64)
    return out


def panel_from_long(
    log: pd.DataFrame,
    attributes: pd.DataFrame,
    *,
    indicators: Sequence[str],
    target: str,
    freq: str,
    source: str = "log",
    line_offset: int = 2,
) -> SalesPanel:
    """Dense panel from a generic item-region log.

    Args:
      log: one row per (item_id, region_id, ds) with numeric ``indicators``.
      attributes: one row per item: ``item_id, brand, category``.
      indicators: the ``D`` indicator columns; ``target`` is one of them.
      freq: pandas frequency of the period calendar (``"D"``, ``"W-WED"``, ...).
      source: file name used in error messages.
      line_offset: file line of the log's first row (2 with a header, 1 without).

    Returns:
      The ``SalesPanel``; periods without a record are zeros (logged repair).

    Raises:
      DataError: missing columns, non-numeric or empty cells, duplicate keys,
        dates off the calendar or items without attributes, naming file, column and lines.
    """
    indicators = list(indicators)
    if target not in indicators:
        raise DataError(f"{source}: target {target!r} is not among indicators {indicators}")
    _require(log, [*KEYS, *indicators], source)
    _require(attributes, ATTRIBUTES, f"{source} attributes")
    log = _numeric(log.reset_index(drop=True), indicators, source, line_offset)
    ds = pd.to_datetime(log["ds"], errors="coerce")
    if ds.isna().any():
        raise DataError(f"{source}: column 'ds' is not a date at {_lines(ds.isna(), line_offset)}")
    dup = log.duplicated(list(KEYS), keep=False)
    if dup.any():
        raise DataError(
            f"{source}: duplicate (item_id, region_id, ds) at {_lines(dup, line_offset)}"
        )
    attributes = attributes[list(ATTRIBUTES)].drop_duplicates("item_id").set_index("item_id")
    for col in ("brand", "category"):
        gap = attributes[col].isna()
        if gap.any():
            logger.warning(
                "%s attributes: %d empty %r cells set to 'unknown'", source, gap.sum(), col
            )
            attributes[col] = attributes[col].astype(object).where(~gap, "unknown")
    items = np.sort(log["item_id"].unique())
    unknown = ~log["item_id"].isin(attributes.index)
    if unknown.any():
        raise DataError(
            f"{source}: column 'item_id' has items without attributes at "
            f"{_lines(unknown, line_offset)}"
        )
    regions = np.sort(log["region_id"].astype(str).unique())
    dates = pd.date_range(ds.min(), ds.max(), freq=freq)
    t = dates.get_indexer(ds)
    if (t < 0).any():
        raise DataError(
            f"{source}: column 'ds' has dates off the {freq!r} calendar at "
            f"{_lines(pd.Series(t < 0), line_offset)}"
        )
    r = np.searchsorted(regions, log["region_id"].astype(str).to_numpy())
    i = np.searchsorted(items, log["item_id"].to_numpy())
    x = np.zeros((len(regions), len(items), len(dates), len(indicators)), np.float32)
    x[r, i, t] = log[indicators].to_numpy(np.float32)
    missing = x.shape[0] * x.shape[1] * x.shape[2] - len(log)
    if missing:
        logger.warning(
            "%s: %d (region, item, period) cells without a record filled with 0", source, missing
        )
    attrs = attributes.loc[items]
    return SalesPanel(
        x=x,
        brand=pd.factorize(attrs["brand"])[0].astype(np.int32),
        category=pd.factorize(attrs["category"])[0].astype(np.int32),
        target=indicators.index(target),
        regions=tuple(regions),
        items=tuple(str(v) for v in items),
        indicators=tuple(indicators),
        dates=dates.to_numpy(),
    )


def load_frat(path: str | Path) -> SalesPanel:
    """dunnhumby Breakfast at the Frat: item = UPC, region = store, weekly.

    Reads ``transaction.csv(.gz)`` and ``product.csv`` (brand = manufacturer,
    category = category). Missing ``price`` / ``base_price`` cells are filled
    from the other price column of the same row, then from the previous week of
    the same series (logged repair).
    """
    path = Path(path)
    tx_path = next(
        (path / n for n in ("transaction.csv.gz", "transaction.csv") if (path / n).exists()), None
    )
    if tx_path is None:
        raise DataError(f"{path}: no transaction.csv(.gz)")
    tx = pd.read_csv(tx_path)
    _require(tx, ["week_end_date", "store_id", "upc_id", *FRAT_INDICATORS], str(tx_path))
    for a, b in (("price", "base_price"), ("base_price", "price")):
        gap = tx[a].isna()
        if gap.any():
            tx.loc[gap, a] = tx.loc[gap, b]
            tx[a] = tx.groupby(["store_id", "upc_id"])[a].ffill()
            logger.warning(
                "%s: %d empty %r cells filled from %r / the previous week", tx_path, gap.sum(), a, b
            )
    products = pd.read_csv(path / "product.csv")
    _require(products, ["upc_id", "manufacturer", "category"], str(path / "product.csv"))
    log = tx.rename(columns={"upc_id": "item_id", "store_id": "region_id", "week_end_date": "ds"})
    attributes = products.rename(columns={"upc_id": "item_id", "manufacturer": "brand"})[
        list(ATTRIBUTES)
    ]
    return panel_from_long(
        log,
        attributes,
        indicators=FRAT_INDICATORS,
        target="units",
        freq="W-WED",
        source=str(tx_path),
    )


def _read_cainiao(file: Path, columns: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """A CaiNiao CSV with or without its header row; returns (frame, line of first row)."""
    with open(file) as f:
        first = f.readline().strip().split(",")
    has_header = first[0] == "date"
    try:
        df = pd.read_csv(
            file, header=0 if has_header else None, names=None if has_header else columns, dtype=str
        )
    except pd.errors.ParserError as err:
        raise DataError(f"{file}: {err}") from err
    if has_header:
        _require(df, columns, str(file))
    elif df.shape[1] != len(columns):
        raise DataError(f"{file}: {df.shape[1]} columns, the format has {len(columns)}")
    offset = 2 if has_header else 1
    short = df[list(columns)].isna().any(axis=1)
    if short.any():
        col = df.columns[df[short].isna().any(axis=0)][0]
        raise DataError(f"{file}: column {col!r} is empty at {_lines(short, offset)}")
    return df, offset


def load_cainiao(path: str | Path) -> SalesPanel:
    """Tianchi CaiNiao ``item_feature*.csv`` (region ``all``) and ``item_store_feature*.csv``.

    ``path`` is a folder holding either or both, or a single file. Headerless
    (the original) and header files are both read. 25 indicators, daily; the
    target is ``qty_alipay_njhs``; brand = ``brand_id``, category = ``cate_id``.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("item_*feature*.csv"))
    if not files:
        raise DataError(f"{path}: no item_feature*.csv or item_store_feature*.csv")
    logs = []
    for file in files:
        regional = "store" in file.name
        columns = [
            *CAINIAO_IDS[:2],
            *(["store_code"] if regional else []),
            *CAINIAO_IDS[2:],
            *CAINIAO_INDICATORS,
        ]
        df, offset = _read_cainiao(file, columns)
        ds = pd.to_datetime(df["date"], format="%Y%m%d", errors="coerce")
        if ds.isna().any():
            raise DataError(f"{file}: column 'date' is not YYYYMMDD at {_lines(ds.isna(), offset)}")
        df = _numeric(df, CAINIAO_INDICATORS, str(file), offset)
        df["ds"] = ds
        df["region_id"] = df["store_code"] if regional else "all"
        logs.append(df)
    log = pd.concat(logs, ignore_index=True)
    attributes = log.rename(columns={"brand_id": "brand", "cate_id": "category"})[list(ATTRIBUTES)]
    return panel_from_long(
        log,
        attributes,
        indicators=CAINIAO_INDICATORS,
        target="qty_alipay_njhs",
        freq="D",
        source=", ".join(str(f) for f in files),
        line_offset=offset if len(files) == 1 else 1,
    )


def read_cainiao_config(file: str | Path) -> pd.DataFrame:
    """CaiNiao cost config ``item_id, store_code, a_b`` (headerless) -> ``item_id, store_code, a, b``.

    ``a`` is the unit cost of under-forecasting and ``b`` of over-forecasting.
    """
    df = pd.read_csv(file, header=None, names=["item_id", "store_code", "a_b"], dtype=str)
    parts = df["a_b"].str.split("_", expand=True)
    if parts.shape[1] != 2:
        raise DataError(f"{file}: column 'a_b' is not '<a>_<b>'")
    out = _numeric(parts.set_axis(["a", "b"], axis=1), ["a", "b"], f"{file} a_b", 1)
    return pd.concat([df[["item_id", "store_code"]], out], axis=1)


def load_completejourney(path: str | Path, *, n_items: int = 50, n_regions: int = 5) -> SalesPanel:
    """84.51 Complete Journey: item = product, region = store, daily.

    Keeps the ``n_regions`` stores and then the ``n_items`` products (with a
    product record) selling most units there; indicators per (product, store, day):
    quantity, sales value, retail and coupon discounts, baskets, households.
    Brand = ``manufacturer_id``, category = ``product_category``.
    """
    path = Path(path)
    tx_file = path / "transactions.parquet"
    tx = pd.read_parquet(tx_file)
    _require(tx, ["product_id", "store_id", "basket_id", "household_id", "quantity", "sales_value",
                  "retail_disc", "coupon_disc", "transaction_timestamp"], str(tx_file))  # fmt: skip
    products = pd.read_parquet(path / "products.parquet")
    _require(
        products,
        ["product_id", "manufacturer_id", "product_category"],
        str(path / "products.parquet"),
    )
    known = tx["product_id"].isin(products["product_id"])
    if not known.all():
        logger.warning(
            "%s: %d rows whose product_id has no product record dropped", tx_file, (~known).sum()
        )
    tx = tx[known]
    stores = tx.groupby("store_id")["quantity"].sum().nlargest(n_regions).index
    tx = tx[tx["store_id"].isin(stores)]
    top = tx.groupby("product_id")["quantity"].sum().nlargest(n_items).index
    tx = tx[tx["product_id"].isin(top)].assign(ds=tx["transaction_timestamp"].dt.floor("D"))
    log = (
        tx.groupby(["product_id", "store_id", "ds"])
        .agg(
            quantity=("quantity", "sum"),
            sales_value=("sales_value", "sum"),
            retail_disc=("retail_disc", "sum"),
            coupon_disc=("coupon_disc", "sum"),
            baskets=("basket_id", "nunique"),
            households=("household_id", "nunique"),
        )
        .reset_index()
        .rename(columns={"product_id": "item_id", "store_id": "region_id"})
    )
    attributes = products[["product_id", "manufacturer_id", "product_category"]].set_axis(
        list(ATTRIBUTES), axis=1
    )
    return panel_from_long(
        log, attributes, indicators=CJ_INDICATORS, target="quantity", freq="D", source=str(tx_file)
    )


SYNTHETIC_INDICATORS = ("sales", "pv", "uv", "price", "promo")


def synthetic_panel(
    seed: int = 0,
    *,
    n_regions: int = 3,
    n_items: int = 24,
    n_brands: int = 6,
    n_categories: int = 3,
    n_periods: int = 120,
) -> tuple[SalesPanel, np.ndarray]:
    """Sales driven by lagged traffic with brand, category and regional effects.

    Page views follow an item level, a regional scale, a slow brand trend, a
    category cycle and irregular promotions (1-3 periods, price cut and traffic
    boost). Expected sales are ``0.4 * (0.5 pv[t-1] + 0.3 pv[t-2] + 0.2 pv[t-3])``
    times a price effect and a regional conversion rate; observed sales are Poisson.

    Returns:
      panel: indicators ``sales, pv, uv, price, promo``.
      expected: f32[R, I, L] the noise-free expected sales (ground truth).
    """
    rng = np.random.default_rng(seed)
    r, i, n = n_regions, n_items, n_periods
    t = np.arange(n)
    brand = rng.permutation(np.arange(i) % n_brands).astype(np.int32)
    category = (np.arange(i) % n_categories).astype(np.int32)
    item_level = rng.normal(3.0, 0.5, i)
    region_scale = rng.normal(0.0, 0.4, r)
    conversion = rng.uniform(0.7, 1.3, r)
    brand_trend = rng.normal(0.0, 0.006, n_brands)[:, None] * t  # [B, L]
    phase = rng.uniform(0, 2 * np.pi, n_categories)[:, None]
    category_cycle = 0.4 * np.sin(2 * np.pi * t / 26 + phase)  # [C, L]
    starts = rng.random((r, i, n)) < 0.04
    durations = rng.integers(1, 4, (r, i, n))
    promo = np.zeros((r, i, n))
    for lag in range(3):
        promo[..., lag:] = np.maximum(
            promo[..., lag:], starts[..., : n - lag] * (durations[..., : n - lag] > lag)
        )
    log_pv = (
        item_level[None, :, None]
        + region_scale[:, None, None]
        + brand_trend[brand][None]
        + category_cycle[category][None]
        + 0.8 * promo
        + rng.normal(0.0, 0.15, (r, i, n))
    )
    pv = rng.poisson(np.exp(log_pv)).astype(np.float64)
    uv = rng.binomial(pv.astype(np.int64), 0.6).astype(np.float64)
    base_price = rng.uniform(2.0, 6.0, i)[None, :, None]
    price = base_price * (1.0 - 0.25 * promo)
    lagged = np.zeros_like(pv)
    for lag, w in zip((1, 2, 3), (0.5, 0.3, 0.2), strict=True):
        lagged[..., lag:] += w * pv[..., :-lag]
    lagged[..., :3] = pv[..., :3]
    expected = 0.4 * lagged * (base_price / price) ** 1.5 * conversion[:, None, None]
    sales = rng.poisson(expected).astype(np.float64)
    x = np.stack([sales, pv, uv, price, promo], axis=-1).astype(np.float32)
    panel = SalesPanel(
        x=x,
        brand=brand,
        category=category,
        target=0,
        regions=tuple(f"region{k + 1}" for k in range(r)),
        items=tuple(f"item{k}" for k in range(i)),
        indicators=SYNTHETIC_INDICATORS,
        dates=np.datetime64("2020-01-06") + 7 * t.astype("timedelta64[D]"),
    )
    return panel, expected.astype(np.float32)
