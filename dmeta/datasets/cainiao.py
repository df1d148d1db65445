"""Tianchi CaiNiao: daily item features ``item_feature*.csv`` (region ``all``) and
``item_store_feature*.csv`` (per store), with or without a header row; 25 indicators, the
target is ``qty_alipay_njhs``; brand = ``brand_id``, category = ``cate_id``. The cost
config (``item_id, store_code, a_b``) is read by ``read_config``. Read by Sales CNN."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmeta.data.frames import DataError
from dmeta.datasets import _csv
from dmeta.datasets.itemlog import ItemLog, checked

INDICATORS = (
    "pv_ipv", "pv_uv", "cart_ipv", "cart_uv", "collect_uv", "num_gmv", "amt_gmv", "qty_gmv",
    "unum_gmv", "amt_alipay", "num_alipay", "qty_alipay", "unum_alipay", "ztc_pv_ipv",
    "tbk_pv_ipv", "ss_pv_ipv", "jhs_pv_ipv", "ztc_pv_uv", "tbk_pv_uv", "ss_pv_uv", "jhs_pv_uv",
    "num_alipay_njhs", "amt_alipay_njhs", "qty_alipay_njhs", "unum_alipay_njhs",
)  # fmt: skip
IDS = ("date", "item_id", "cate_id", "cate_level_id", "brand_id", "supplier_id")


def _read(file: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CaiNiao CSV with or without its header row."""
    with open(file, encoding="latin-1") as f:
        has_header = f.readline().strip().split(",")[0] == "date"
    return _csv.read(file, required=columns, names=None if has_header else columns)


def load(path: str | Path, *, max_gap_days: float | None = _csv.MAX_GAP_DAYS) -> ItemLog:
    """Reads a CaiNiao feature file, or the feature files of folder ``path``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    files = [path] if path.is_file() else sorted(path.glob("item_*feature*.csv"))
    if not files:
        raise DataError(f"{path}: no item_feature*.csv or item_store_feature*.csv")
    logs = []
    for file in files:
        regional = "store" in file.name
        columns = [*IDS[:2], *(["store_code"] if regional else []), *IDS[2:], *INDICATORS]
        raw = _read(file, columns)
        logs.append(pd.DataFrame({
            "item_id": _csv.ids(raw, file, "item_id"),
            "region_id": _csv.ids(raw, file, "store_code") if regional else "all",
            "ds": _csv.dates(raw, file, "date", date_format="%Y%m%d", max_gap_days=max_gap_days),
            **{c: _csv.numbers(raw, file, c) for c in INDICATORS},
            "brand": _csv.ids(raw, file, "brand_id"),
            "category": _csv.ids(raw, file, "cate_id"),
            "_line": raw["_line"],
        }))  # fmt: skip
    log = pd.concat(logs, ignore_index=True)
    source = files[0] if len(files) == 1 else path
    return checked(log.drop(columns=["brand", "category"]), log, indicators=INDICATORS,
                   target="qty_alipay_njhs", freq="D", source=source)  # fmt: skip


def read_config(file: str | Path) -> pd.DataFrame:
    """Cost config ``item_id, store_code, a_b`` (headerless) -> ``item_id, store_code, a, b``:
    ``a`` the unit cost of under-forecasting, ``b`` of over-forecasting."""
    raw = _csv.read(file, names=("item_id", "store_code", "a_b"))
    parts = raw["a_b"].str.split("_", expand=True)
    if parts.shape[1] != 2:
        bad = parts.isna().any(axis=1) if parts.shape[1] > 2 else pd.Series(True, raw.index)
        _csv.check(raw, file, "a_b", bad.to_numpy(), "is not '<a>_<b>'")
    pieces = raw.assign(a=parts[0], b=parts[1])
    return pd.DataFrame({
        "item_id": _csv.ids(raw, file, "item_id"),
        "store_code": _csv.ids(raw, file, "store_code"),
        "a": _csv.numbers(pieces, file, "a"),
        "b": _csv.numbers(pieces, file, "b"),
    })  # fmt: skip
