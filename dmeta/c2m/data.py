"""Event-log loaders for C2M: Taobao UserBehavior, JData 2016, REES46 and a generic format.

Every loader returns an ``EventLog``: ``events`` with the columns ``user_id, item_id,
category_id`` (int64), ``behavior`` (one of ``BEHAVIORS``) and ``timestamp`` (int64 seconds),
sorted by user and time, plus an optional ``attributes`` table (``item_id`` and one column per
discrete attribute). Malformed rows (missing fields, non-numeric ids or times, unknown behaviour
codes) are dropped and logged with the file, the column and the first offending rows; a file in
which no row survives raises ``ValueError``. Exact duplicate events (e.g. from two overlapping
extracts in one folder) are dropped and logged.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BEHAVIORS = ("view", "cart", "fav", "buy", "remove", "follow", "click")
COLUMNS = ("user_id", "item_id", "category_id", "behavior", "timestamp")


@dataclasses.dataclass(frozen=True)
class EventLog:
    """events: the canonical event frame; attributes: item attributes or None."""

    events: pd.DataFrame
    attributes: pd.DataFrame | None = None


def _files(path: Path, pattern: str) -> list[Path]:
    files = sorted(path.glob(pattern)) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no file matches {pattern}")
    return files


def _read(path: Path, *, header: bool = True, **kwargs) -> pd.DataFrame:
    """Reads all columns as strings and records each row's 1-based file line in ``_line``."""
    try:
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, header=0 if header else None, **kwargs
        )
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: malformed CSV ({err})") from err
    return frame.assign(_line=np.arange(len(frame)) + (2 if header else 1))


def _drop_bad(
    frame: pd.DataFrame, bad: pd.Series, path: Path, column: str, why: str
) -> pd.DataFrame:
    """Drops rows where ``bad`` holds, logging file, column and the first rows (1-based lines)."""
    if bad.any():
        rows = frame["_line"].to_numpy()[bad.to_numpy()][:5].tolist()
        log.warning(
            "%s: dropped %d rows with %s in column %r (lines %s...)",
            path,
            int(bad.sum()),
            why,
            column,
            rows,
        )
        frame = frame.loc[~bad.to_numpy()].reset_index(drop=True)
    return frame


def _numeric(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        frame = frame.assign(**{column: values})
        frame = _drop_bad(frame, values.isna(), path, column, "a missing or non-numeric value")
    return frame.astype({c: "int64" for c in columns})


def _finish(frames: list[pd.DataFrame], source: Path) -> pd.DataFrame:
    events = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    if events.empty:
        raise ValueError(f"{source}: no valid events")
    events = events.astype({"behavior": "category"})
    duplicated = events.duplicated()
    if duplicated.any():
        log.warning("%s: dropped %d exact duplicate events", source, int(duplicated.sum()))
        events = events.loc[~duplicated.to_numpy()]
    return events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _map_behavior(frame: pd.DataFrame, path: Path, column: str, mapping: dict) -> pd.DataFrame:
    behavior = frame[column].map(mapping)
    frame = frame.reset_index(drop=True).assign(behavior=behavior)
    return _drop_bad(frame, behavior.isna(), path, column, f"a behaviour outside {sorted(mapping)}")


def load_userbehavior(path: Path) -> EventLog:
    """Taobao UserBehavior: headerless ``user_id,item_id,category_id,behavior_type,timestamp``
    (pv/cart/fav/buy). ``path`` is a file or a folder of CSV files."""
    frames = []
    for file in _files(Path(path), "*.csv"):
        names = ["user_id", "item_id", "category_id", "type", "timestamp"]
        raw = _read(file, header=False, names=names)
        mapping = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}
        raw = _map_behavior(raw, file, "type", mapping)
        frames.append(_numeric(raw, file, ("user_id", "item_id", "category_id", "timestamp")))
    return EventLog(_finish(frames, Path(path)))


def load_jdata(path: Path) -> EventLog:
    """JData 2016 actions ``user_id,sku_id,time,model_id,type,cate,brand`` (type 1 browse,
    2 cart, 3 remove, 4 buy, 5 follow, 6 click); ``JData_Product.csv`` (``sku_id,a1,a2,a3,
    cate,brand``) beside the actions gives the attributes a1-a3 when present."""
    path = Path(path)
    frames = []
    mapping = {"1": "view", "2": "cart", "3": "remove", "4": "buy", "5": "follow", "6": "click"}
    for file in _files(path, "*Action*.csv"):
        raw = _read(file)
        raw = raw.rename(columns={"sku_id": "item_id", "cate": "category_id"})
        raw = _map_behavior(raw, file, "type", mapping).reset_index(drop=True)
        time = pd.to_datetime(raw["time"], errors="coerce")
        raw = _drop_bad(raw.assign(timestamp=time), time.isna(), file, "time", "an unparsable time")
        raw = raw.assign(timestamp=raw["timestamp"].astype("datetime64[s]").astype("int64"))
        raw = raw.assign(user_id=raw["user_id"].str.replace(r"\.0$", "", regex=True))
        frames.append(_numeric(raw, file, ("user_id", "item_id", "category_id", "timestamp")))
    product = (path if path.is_dir() else path.parent) / "JData_Product.csv"
    attributes = None
    if product.exists():
        raw = _read(product).rename(columns={"sku_id": "item_id"})
        columns = ("item_id", "a1", "a2", "a3")
        attributes = _numeric(raw[[*columns, "_line"]], product, columns).drop(columns="_line")
    return EventLog(_finish(frames, path), attributes)


def load_rees46(path: Path) -> EventLog:
    """REES46 multi-category store: ``event_time,event_type,product_id,category_id,
    category_code,brand,price,user_id,user_session`` (view/cart/remove_from_cart/purchase).
    Attributes: brand and price decile per product."""
    frames, items = [], []
    mapping = {"view": "view", "cart": "cart", "remove_from_cart": "remove", "purchase": "buy"}
    for file in _files(Path(path), "*.csv"):
        raw = _read(file)
        raw = raw.rename(columns={"product_id": "item_id"})
        raw = _map_behavior(raw, file, "event_type", mapping).reset_index(drop=True)
        time = pd.to_datetime(raw["event_time"].str.replace(" UTC", ""), errors="coerce")
        raw = _drop_bad(
            raw.assign(timestamp=time), time.isna(), file, "event_time", "an unparsable time"
        )
        raw = raw.assign(timestamp=raw["timestamp"].astype("datetime64[s]").astype("int64"))
        raw = _numeric(raw, file, ("user_id", "item_id", "category_id", "timestamp"))
        frames.append(raw)
        items.append(raw[["item_id", "brand", "price"]])
    items = pd.concat(items).drop_duplicates("item_id")
    price = pd.to_numeric(items["price"], errors="coerce")
    attributes = pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(),
            "brand": pd.factorize(items["brand"].replace("", "unknown"))[0],
            "price_decile": np.where(
                price.isna(), -1, np.minimum(price.rank(pct=True) * 10, 9).fillna(-1)
            ).astype(int),
        }
    )
    return EventLog(_finish(frames, Path(path)), attributes)


def load_events(path: Path) -> EventLog:
    """Generic ``user_id,item_id,category_id,behavior,timestamp`` (behaviours from
    ``BEHAVIORS``); an ``items.csv`` beside it (``item_id`` + attribute columns) is optional."""
    path = Path(path)
    frames = []
    for file in _files(path, "events*.csv"):
        raw = _read(file)
        missing = [c for c in COLUMNS if c not in raw.columns]
        if missing:
            raise ValueError(f"{file}: missing columns {missing}")
        raw = _map_behavior(raw, file, "behavior", {b: b for b in BEHAVIORS})
        frames.append(_numeric(raw, file, ("user_id", "item_id", "category_id", "timestamp")))
    items = (path if path.is_dir() else path.parent) / "items.csv"
    attributes = None
    if items.exists():
        raw = _read(items)
        attributes = _numeric(raw, items, tuple(c for c in raw.columns if c != "_line"))
        attributes = attributes.drop(columns="_line")
    return EventLog(_finish(frames, path), attributes)


LOADERS = {
    "userbehavior": load_userbehavior,
    "jdata": load_jdata,
    "rees46": load_rees46,
    "events": load_events,
}
