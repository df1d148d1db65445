"""Generic event logs ``user_id,item_id,category_id,behavior,timestamp`` (``events*.csv``),
and the checks shared by every event-log source (``userbehavior``, ``jdata``, ``rees46``).

Ids are text. ``timestamp`` is integer seconds (or a date-time, converted). Malformed rows
(an empty id, an unknown behaviour, a bad time) are dropped and logged with file, column
and lines; exact duplicate events (e.g. two overlapping extracts in one folder) are dropped
and logged; a log in which no row survives raises. An ``items.csv`` beside the events
(``item_id`` + attribute columns) gives the item attributes. Read by C2M.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import DataError
from dmeta.datasets import _csv

BEHAVIORS = ("view", "cart", "fav", "buy", "remove", "follow", "click")
COLUMNS = ("user_id", "item_id", "category_id", "behavior", "timestamp")
ID_COLUMNS = ("user_id", "item_id", "category_id")


@dataclasses.dataclass(frozen=True, eq=False)
class Events:
    """events: COLUMNS (ids text, timestamp i64 seconds) in file order; attributes:
    ``item_id`` + attribute columns, or None."""

    events: pd.DataFrame
    attributes: pd.DataFrame | None
    path: Path


def files(path: str | Path, pattern: str) -> list[Path]:
    """``path`` itself, or the files of folder ``path`` matching ``pattern``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    found = sorted(p for p in path.glob(pattern) if p.is_file()) if path.is_dir() else [path]
    if not found:
        raise DataError(f"{path}: no file matches {pattern}")
    return found


def behaviors(frame: pd.DataFrame, source, column: str, mapping: dict) -> pd.DataFrame:
    """Maps ``column`` to ``behavior``; rows with another code are dropped (logged)."""
    behavior = frame[column].str.strip().map(mapping)
    frame = frame.assign(behavior=behavior)
    return _csv.drop_rows(frame, source, column, behavior.isna(),
                          f"a behaviour outside {sorted(mapping)}")  # fmt: skip


def seconds(
    frame: pd.DataFrame,
    source,
    column: str,
    *,
    unix: bool,
    max_gap_days: float | None = _csv.MAX_GAP_DAYS,
) -> pd.DataFrame:
    """``timestamp`` (i64 seconds) from unix seconds or date-times; bad rows dropped (logged),
    mixed timezone offsets and a gap longer than ``max_gap_days`` raise."""
    raw = frame[column].str.strip()
    if unix:
        value = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(value) | (value != np.floor(value)) | (np.abs(value) > 2**62)
        frame = _csv.drop_rows(frame.assign(timestamp=value), source, column, bad,
                               "a missing or non-integer time")  # fmt: skip
        frame = frame.assign(timestamp=frame["timestamp"].astype(np.int64))
        _csv.check_gap(frame, source, column, pd.to_datetime(frame["timestamp"], unit="s"),
                       max_gap_days)  # fmt: skip
        return frame
    kept = frame.assign(_raw=_csv.drop_offset(frame, source, column, raw))
    time = pd.to_datetime(kept["_raw"], errors="coerce", format="ISO8601")
    kept = _csv.drop_rows(kept.assign(timestamp=time), source, column, time.isna().to_numpy(),
                          "an unparsable time")  # fmt: skip
    _csv.check_gap(kept, source, column, kept["timestamp"], max_gap_days)
    stamp = kept["timestamp"].astype("datetime64[s]").astype(np.int64)
    return kept.drop(columns="_raw").assign(timestamp=stamp)


def ids(frame: pd.DataFrame, source, columns: Sequence[str] = ID_COLUMNS) -> pd.DataFrame:
    """Id columns as stripped text; rows with an empty id are dropped (logged)."""
    for column in columns:
        value = frame[column].str.strip()
        frame = _csv.drop_rows(frame.assign(**{column: value}), source, column,
                               (value == "").to_numpy(), "an empty id")  # fmt: skip
    return frame


def finish(frames: list[pd.DataFrame], source) -> pd.DataFrame:
    """One frame of COLUMNS; exact duplicates dropped (logged); empty raises."""
    events = pd.concat([f[[*COLUMNS, "_line"]] for f in frames], ignore_index=True)
    if events.empty:
        raise DataError(f"{source}: no valid events")
    dup = events.duplicated(list(COLUMNS)).to_numpy()
    if dup.any():
        _csv.repair(source, f"dropped {int(dup.sum())} exact duplicate events")
    return events.loc[~dup, list(COLUMNS)].reset_index(drop=True)


def item_attributes(path: Path, rename: dict | None = None, columns=None) -> pd.DataFrame:
    """``item_id`` + integer attribute columns of an item file (bad rows dropped, logged)."""
    raw = _csv.read(path).rename(columns=rename or {})
    columns = columns or [c for c in raw.columns if c != "_line"]
    _csv._require(raw, columns, path)
    raw = ids(raw[[*columns, "_line"]], path, ["item_id"])
    for column in columns[1:]:
        value = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        raw = _csv.drop_rows(raw.assign(**{column: value}), path, column,
                             value.isna().to_numpy(), "a missing or non-numeric value")  # fmt: skip
    return raw[columns].astype({c: np.int64 for c in columns[1:]}).reset_index(drop=True)


def load(path: str | Path) -> Events:
    """Reads the generic ``events*.csv`` files at ``path`` (and ``items.csv`` beside them)."""
    path = Path(path)
    frames = []
    for file in files(path, "events*.csv"):
        raw = _csv.read(file, required=COLUMNS)
        raw = behaviors(raw, file, "behavior", {b: b for b in BEHAVIORS})
        frames.append(seconds(ids(raw, file), file, "timestamp", unix=True))
    items = (path if path.is_dir() else path.parent) / "items.csv"
    attributes = item_attributes(items) if items.exists() else None
    return Events(finish(frames, path), attributes, path)
