"""Loaders for the RMLDP datasets into one ``DemandData`` (long frame + groups + relations).

- ``walmart``: Kaggle Walmart Recruiting (``train.csv[.zip]``, ``features.csv``,
  ``stores.csv``): segments are store x department, weekly (season 52); external
  features are the holiday flag and the store-week features (temperature, fuel
  price, CPI, unemployment, markdowns 1-5; markdowns are missing before Nov 2011
  and are read as 0, a logged repair). Groups are the store types A/B/C. There are
  no baskets, so no knowledge graph.
- ``groceries``: Kaggle Groceries (``Groceries_dataset.csv``: member, dd-mm-yyyy
  date, item category): segments are item categories, daily (season 365), demand =
  items bought per day; the external feature is the number of baskets that day.
  Baskets are (member, date); they give the co-occurrence knowledge graph.
- ``table``: any long table (``dmeta.data.frames.read_table``), optionally with a
  ``baskets`` file (basket_id, unique_id) or an ``edges`` file (src, dst, weight)
  and a ``category`` column (moved out of the features into the groups).
- ``synthetic``: ``dmeta.data.synthetic.make_demand`` with its baskets and clusters.

Bad input raises ``DataError`` naming the file, the column and the line.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import LINE_OFFSET, DataError, LongFrame, read_table, validate_long
from dmeta.data.synthetic import make_demand

logger = logging.getLogger(__name__)

WALMART_FEATURES = (
    "Temperature",
    "Fuel_Price",
    "MarkDown1",
    "MarkDown2",
    "MarkDown3",
    "MarkDown4",
    "MarkDown5",
    "CPI",
    "Unemployment",
)


@dataclasses.dataclass(frozen=True, eq=False)
class DemandData:
    """A dataset ready for the RMLDP protocol.

    Attributes:
      name: dataset name used in results.
      frame: the validated long frame.
      groups: unique_id -> category group (the columns of Tables 2-3).
      baskets: ``basket_id, unique_id`` rows, or None.
      edges: ``src, dst, weight`` rows, or None.
    """

    name: str
    frame: LongFrame
    groups: pd.Series
    baskets: pd.DataFrame | None = None
    edges: pd.DataFrame | None = None


def _read_csv(path: Path, columns: tuple[str, ...], **kwargs) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    df = pd.read_csv(path, **kwargs)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def _find(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.zip``."""
    for candidate in (folder / name, folder / f"{name}.zip"):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder}: neither {name} nor {name}.zip found")


def _parse_dates(col: pd.Series, path: Path, fmt: str | None = None) -> pd.Series:
    parsed = pd.to_datetime(col, format=fmt, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        shown = ", ".join(f"line {i + LINE_OFFSET} ({col.iloc[i]!r})" for i in bad[:5])
        raise DataError(f"{path}: column {col.name!r} has unparseable dates at {shown}")
    return parsed


def _numeric(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    num = pd.to_numeric(df[col], errors="coerce")
    bad = np.flatnonzero((num.isna() & df[col].notna()).to_numpy())
    if len(bad):
        shown = ", ".join(f"line {i + LINE_OFFSET} ({df[col].iloc[i]!r})" for i in bad[:5])
        raise DataError(f"{path}: column {col!r} must be numeric at {shown}")
    return num.astype(np.float64)


def load_walmart(folder: str | Path) -> DemandData:
    """Store x department weekly sales with holiday flag and store-week features."""
    folder = Path(folder)
    train_path = _find(folder, "train.csv")
    train = _read_csv(train_path, ("Store", "Dept", "Date", "Weekly_Sales", "IsHoliday"))
    feat_path = folder / "features.csv"
    feats = _read_csv(feat_path, ("Store", "Date", *WALMART_FEATURES))
    stores = _read_csv(folder / "stores.csv", ("Store", "Type"))

    train["Date"] = _parse_dates(train["Date"], train_path)
    feats["Date"] = _parse_dates(feats["Date"], feat_path)
    for col in WALMART_FEATURES:
        feats[col] = _numeric(feats, col, feat_path)
    markdowns = [c for c in WALMART_FEATURES if c.startswith("MarkDown")]
    n_na = int(feats[markdowns].isna().sum().sum())
    if n_na:
        logger.warning("%s: %d missing MarkDown values read as 0 (no markdown)", feat_path, n_na)
        feats[markdowns] = feats[markdowns].fillna(0.0)
    merged = train.merge(
        feats[["Store", "Date", *WALMART_FEATURES]], on=["Store", "Date"], how="left"
    )
    missing = merged[list(WALMART_FEATURES)].isna()
    if missing.any().any():
        row = int(np.flatnonzero(missing.any(axis=1).to_numpy())[0])
        col = missing.columns[missing.iloc[row].to_numpy()][0]
        raise DataError(
            f"{feat_path}: column {col!r} has no value for store {merged['Store'].iloc[row]} "
            f"week {merged['Date'].iloc[row].date()} (needed by {train_path} line "
            f"{row + LINE_OFFSET})"
        )
    holiday = merged["IsHoliday"].astype(str).str.upper().map({"TRUE": 1.0, "FALSE": 0.0})
    bad = np.flatnonzero(holiday.isna().to_numpy())
    if len(bad):
        raise DataError(
            f"{train_path}: column 'IsHoliday' must be TRUE/FALSE at line {bad[0] + LINE_OFFSET} "
            f"({merged['IsHoliday'].iloc[bad[0]]!r})"
        )
    uid = merged["Store"].astype(str) + "_" + merged["Dept"].astype(str)
    long = pd.DataFrame(
        {"unique_id": uid, "ds": merged["Date"], "y": merged["Weekly_Sales"], "holiday": holiday}
    )
    for col in WALMART_FEATURES:
        long[col.lower()] = merged[col].to_numpy()
    frame = validate_long(long, source=str(train_path), freq="W-FRI")
    store_type = dict(zip(stores["Store"].astype(str), stores["Type"].astype(str)))
    ids = frame.frame["unique_id"].drop_duplicates()
    groups = pd.Series(
        [f"type{store_type.get(i.split('_')[0], '?')}" for i in ids], index=ids.to_numpy()
    )
    return DemandData("walmart", frame, groups)


def load_groceries(folder: str | Path) -> DemandData:
    """Item categories' daily demand and (member, date) baskets."""
    folder = Path(folder)
    path = folder / "Groceries_dataset.csv" if folder.is_dir() else folder
    raw = _read_csv(path, ("Member_number", "Date", "itemDescription"))
    empty = np.flatnonzero(raw["itemDescription"].isna().to_numpy())
    if len(empty):
        raise DataError(
            f"{path}: column 'itemDescription' is empty at line {empty[0] + LINE_OFFSET}"
        )
    date = _parse_dates(raw["Date"], path, fmt="%d-%m-%Y")
    basket = raw["Member_number"].astype(str) + "@" + date.dt.strftime("%Y-%m-%d")
    counts = (
        pd.DataFrame({"unique_id": raw["itemDescription"].astype(str), "ds": date})
        .groupby(["unique_id", "ds"])
        .size()
        .rename("y")
        .reset_index()
    )
    n_baskets = basket.groupby(date).nunique()
    counts["baskets"] = counts["ds"].map(n_baskets).astype(np.float64)
    # Days inside a category's span without a purchase are zero demand (validate_long logs
    # the fill); their 'baskets' feature is forward-filled, so we set the true value after.
    frame = validate_long(counts.astype({"y": np.float64}), source=str(path), freq="D")
    calendar = pd.date_range(date.min(), date.max(), freq="D")
    frame.frame["baskets"] = (
        frame.frame["ds"].map(n_baskets.reindex(calendar, fill_value=0)).astype(np.float64)
    )
    baskets = pd.DataFrame({"basket_id": basket, "unique_id": raw["itemDescription"].astype(str)})
    ids = frame.frame["unique_id"].drop_duplicates().to_numpy()
    return DemandData("groceries", frame, pd.Series("all", index=ids), baskets=baskets)


def load_table(
    path: str | Path,
    *,
    baskets: str | Path | None = None,
    edges: str | Path | None = None,
    category_col: str = "category",
) -> DemandData:
    """Any long table; a constant ``category`` column per series becomes the groups."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    head = pd.read_csv(path, nrows=0).columns if path.suffix != ".parquet" else None
    groups = None
    if head is not None and category_col in head:
        cats = pd.read_csv(path, usecols=["unique_id", category_col])
        per_id = cats.groupby("unique_id")[category_col].nunique()
        if (per_id > 1).any():
            bad = per_id.index[per_id > 1][0]
            line = int(np.flatnonzero((cats["unique_id"] == bad).to_numpy())[0]) + LINE_OFFSET
            raise DataError(
                f"{path}: column {category_col!r} changes within series {bad!r} (from line {line})"
            )
        groups = cats.drop_duplicates("unique_id").set_index("unique_id")[category_col].astype(str)
        features = [c for c in head if c not in ("unique_id", "ds", "y", category_col)]
        df = pd.read_csv(path).drop(columns=[category_col])
        frame = validate_long(df, source=str(path), feature_cols=features)
    else:
        frame = read_table(path)
    ids = frame.frame["unique_id"].drop_duplicates().to_numpy()
    if groups is None:
        groups = pd.Series("all", index=ids)
    return DemandData(
        path.stem,
        frame,
        groups.reindex(ids).fillna("all"),
        baskets=None if baskets is None else _read_csv(Path(baskets), ("basket_id", "unique_id")),
        edges=None if edges is None else _read_csv(Path(edges), ("src", "dst")),
    )


def load_synthetic(*, seed: int = 0, **kwargs) -> DemandData:
    """``make_demand`` with its categories as groups and its baskets."""
    demand = make_demand(seed=seed, **kwargs)
    groups = demand.segments.set_index("unique_id")["category"]
    return DemandData("synthetic", validate_long(demand.frame), groups, baskets=demand.baskets)
