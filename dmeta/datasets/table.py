"""Any long table: ``unique_id, ds, y`` plus numeric feature columns (CSV or parquet).

``path`` is the table file, or a folder holding ``series.csv`` and optionally
``regions.csv`` (``unique_id`` + attribute columns) and ``calendar.csv`` (``ds, date_type``
and an optional ``unique_id`` for region-specific days). A ``category`` column, constant
within a series, gives the series' group. ``baskets`` (basket_id, unique_id) and ``edges``
(src, dst[, weight]) files may be named too. Read by RMLDP (via
``dmeta.data.frames.validate_long``) and STMP (region x day panels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import REQUIRED, DataError, LongFrame, validate_long
from dmeta.datasets import _csv


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """series: unique_id, ds, y, features..., _line; the rest optional (None)."""

    series: pd.DataFrame
    feature_cols: tuple[str, ...]
    groups: pd.Series | None
    regions: pd.DataFrame | None
    calendar: pd.DataFrame | None
    baskets: pd.DataFrame | None
    edges: pd.DataFrame | None
    path: Path


def load(
    path: str | Path,
    *,
    id_col: str = "unique_id",
    ds_col: str = "ds",
    y_col: str = "y",
    category_col: str = "category",
    date_format: str | None = None,
    max_gap_days: float | None = _csv.MAX_GAP_DAYS,
    baskets: str | Path | None = None,
    edges: str | Path | None = None,
) -> Table:
    """Reads and checks a long table (and its optional side files)."""
    path = Path(path)
    folder = path if path.is_dir() else None
    file = _csv.find(path, ("series.csv", "series.parquet")) if folder else path
    raw = _csv.read(file, required=(id_col, ds_col, y_col))
    rename = {id_col: "unique_id", ds_col: "ds", y_col: "y"}
    clash = [c for c in REQUIRED if c in raw.columns and rename.get(c, c) != c]
    if clash:
        raise DataError(
            f"{file}: column(s) {clash} clash with the canonical names given to {rename}"
        )
    extra = [c for c in raw.columns if c not in (*rename, category_col, "_line")]
    series = pd.DataFrame({
        "unique_id": _csv.ids(raw, file, id_col),
        "ds": _csv.dates(raw, file, ds_col, date_format=date_format, max_gap_days=max_gap_days),
        "y": _csv.numbers(raw, file, y_col),
        **{c: _csv.numbers(raw, file, c) for c in extra},
        "_line": raw["_line"],
    })  # fmt: skip
    groups = _groups(raw, file, series["unique_id"], category_col)
    side = {name: folder / f"{name}.csv" if folder else None for name in ("regions", "calendar")}
    return Table(
        series, tuple(extra), groups,
        _regions(side["regions"]), _calendar(side["calendar"], date_format),
        None if baskets is None else _side(baskets, ("basket_id", "unique_id")),
        None if edges is None else _side(edges, ("src", "dst")),
        file,
    )  # fmt: skip


def _groups(raw: pd.DataFrame, file: Path, ids: pd.Series, column: str) -> pd.Series | None:
    if column not in raw.columns:
        return None
    cats = _csv.text(raw, file, column, allow_empty=True)
    first = cats.groupby(ids, sort=False).transform("first")
    _csv.check(raw, file, column, (cats != first).to_numpy(), "changes within its series")
    return pd.Series(cats.to_numpy(), index=ids.to_numpy()).groupby(level=0, sort=False).first()


def _side(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    raw = _csv.read(path, required=required)
    out = raw.copy()
    for col in required:
        out[col] = _csv.ids(raw, path, col)
    if "weight" in raw.columns:
        out["weight"] = _csv.numbers(raw, path, "weight")
    return out.drop(columns="_line")


def _regions(path: Path | None) -> pd.DataFrame | None:
    if path is None or not path.exists():
        return None
    raw = _csv.read(path, required=("unique_id",))
    regions = raw.drop(columns="_line").assign(unique_id=_csv.ids(raw, path, "unique_id"))
    _csv.check(raw, path, "unique_id", regions["unique_id"].duplicated().to_numpy(), "repeats")
    return regions


def _calendar(path: Path | None, date_format: str | None) -> pd.DataFrame | None:
    if path is None or not path.exists():
        return None
    raw = _csv.read(path, required=("ds", "date_type"))
    region = (_csv.text(raw, path, "unique_id", allow_empty=True) if "unique_id" in raw.columns
              else pd.Series("", index=raw.index))  # fmt: skip
    return pd.DataFrame({
        "ds": _csv.dates(raw, path, "ds", date_format=date_format, max_gap_days=None),
        "date_type": _csv.text(raw, path, "date_type"),
        "unique_id": region,
        "_line": raw["_line"],
    })  # fmt: skip


def long_frame(
    table: Table,
    *,
    feature_cols: Sequence[str] | None = None,
    freq: str | None = None,
    negative: str = "clip",
    duplicates: str = "error",
) -> LongFrame:
    """The series as a validated ``LongFrame`` (options as ``validate_long``)."""
    series = table.series
    return validate_long(
        series.drop(columns="_line"),
        source=str(table.path),
        freq=freq,
        negative=negative,
        duplicates=duplicates,
        feature_cols=feature_cols,
        lines=series["_line"].to_numpy(np.int64),
    )
