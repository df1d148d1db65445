"""Long-format time series in memory: validation and logged repairs (files: ``dmeta.datasets``).

The canonical layout is ``unique_id, ds, y`` plus numeric feature columns,
sorted by ``(unique_id, ds)``, every series dense from its first to its last
date on one regular calendar at ``freq`` shared by all series.

Bad input raises ``DataError`` naming the source, the column and the rows;
fixable problems are repaired, logged (``logging.WARNING``) and recorded in
``LongFrame.repairs``.

Row numbers in messages are file line numbers: the header is line 1 and the
first data row is line 2 (0-based data position + 2). Frames built in memory
are numbered the same way, so a CSV and the DataFrame read from it report the
same lines; ``dmeta.datasets`` passes the physical lines of the rows it read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

REQUIRED = ("unique_id", "ds", "y")
LINE_OFFSET = 2  # header is line 1, first data row is line 2
MAX_SHOWN = 5
F32_MAX = float(np.finfo(np.float32).max)
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


class DataError(ValueError):
    """Bad input data; the message names the source, the column and the rows."""


@dataclasses.dataclass(frozen=True, eq=False)
class LongFrame:
    """A validated long-format frame.

    Attributes:
      frame: columns ``unique_id, ds, y, *feature_cols`` (y and features float64),
        sorted by (unique_id, ds), dense regular dates per series, default index.
      freq: pandas frequency string of the common calendar (e.g. ``"D"``, ``"W-FRI"``).
      feature_cols: names of the external feature columns, in frame order.
      repairs: human-readable log of every repair made, in order.
    """

    frame: pd.DataFrame
    freq: str
    feature_cols: tuple[str, ...]
    repairs: tuple[str, ...]


def validate_long(
    df: pd.DataFrame,
    *,
    source: str = "<DataFrame>",
    freq: str | None = None,
    negative: str = "clip",
    duplicates: str = "error",
    feature_cols: Sequence[str] | None = None,
    lines: np.ndarray | None = None,
) -> LongFrame:
    """Validates and repairs a long-format frame with columns ``unique_id, ds, y, ...``.

    Args:
      df: the frame; its row order gives the line numbers in messages.
      source: name used in messages (a file path or a description).
      freq: calendar frequency (``"D"``, ``"W-FRI"``, ...); None infers the most common
        difference between consecutive dates of a series over the whole dataset.
      negative: ``"clip"`` clips negative y to 0 (a logged repair; e.g. returns),
        ``"error"`` raises naming the lines.
      duplicates: ``"error"`` raises on repeated (unique_id, ds) naming the lines,
        ``"sum"`` merges them (y summed, features averaged; a logged repair).
      feature_cols: the allowed feature columns (any other column raises); None takes
        every extra column, each of which must be numeric (bool counts as numeric).
      lines: i64[N] the file line of each row for messages (default: position + 2).

    Returns:
      The validated ``LongFrame``. Unsorted dates are sorted and gaps filled to the
      regular calendar (y = 0, features forward-filled), both logged repairs.

    Raises:
      DataError: missing or unknown columns, NaN/inf or non-numeric values, unparseable
        or off-calendar dates, negative y (``negative="error"``), duplicate rows
        (``duplicates="error"``), no rows.
    """
    _check_option("negative", negative, ("clip", "error"))
    _check_option("duplicates", duplicates, ("error", "sum"))
    _require(df, REQUIRED, source)
    extra = [c for c in df.columns if c not in REQUIRED]
    if feature_cols is None:
        feature_cols = tuple(extra)
    else:
        feature_cols = tuple(feature_cols)
        _require(df, feature_cols, source)
        reserved = [c for c in feature_cols if c in REQUIRED]
        if reserved:
            raise DataError(f"{source}: feature_cols {reserved} repeat required columns")
        unknown = [c for c in extra if c not in feature_cols]
        if unknown:
            raise DataError(
                f"{source}: unknown column(s) {unknown}; feature_cols are {list(feature_cols)}"
            )
    if len(df) == 0:
        raise DataError(f"{source}: no data rows")

    df = df.reset_index(drop=True)
    line = np.arange(len(df)) + LINE_OFFSET if lines is None else np.asarray(lines)
    repairs: list[str] = []

    def repair(msg: str) -> None:
        logger.warning("%s: %s", source, msg)
        repairs.append(msg)

    ids = df["unique_id"]
    if ids.isna().any():
        raise DataError(f"{source}: column 'unique_id' is empty at {_lines(ids.isna(), ids, line)}")
    ds = _dates(df["ds"], source, line)
    values = {c: _numeric(df[c], c, source, line) for c in ("y", *feature_cols)}
    y = values["y"]
    negative_rows = y < 0
    if negative_rows.any():
        where = _lines(negative_rows, df["y"], line)
        if negative == "error":
            raise DataError(f"{source}: column 'y' has negative demand at {where}")
        values["y"] = np.maximum(y, 0.0)
        repair(f"clipped {int(negative_rows.sum())} negative y values to 0 ({where})")

    out = pd.DataFrame({"unique_id": ids, "ds": ds, **values})
    out["_line"] = line
    out = _merge_duplicates(out, feature_cols, duplicates, source, repair)
    out = _sort(out, repair)
    freq = freq or infer_freq(out["ds"], out["unique_id"], source)
    out = _fill_gaps(out, feature_cols, freq, source, repair)
    return LongFrame(out, freq, feature_cols, tuple(repairs))


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; use one of {allowed}")


def _require(df: pd.DataFrame, cols: Sequence[str], source: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing required column(s) {missing}; columns found: {list(df.columns)}"
        )


def _lines(bad: np.ndarray | pd.Series, shown: pd.Series | None, line: np.ndarray) -> str:
    """'lines 3, 7 (values [...])' for the first MAX_SHOWN True positions of ``bad``."""
    pos = np.flatnonzero(np.asarray(bad))
    values = None if shown is None else [str(shown.iloc[p]) for p in pos[:MAX_SHOWN]]
    return _fmt_lines(line[pos], values)


def _fmt_lines(lines: np.ndarray, values: list[str] | None = None) -> str:
    """'lines 3, 7 and 2 more (values a, b)' for line numbers ``lines`` (first MAX_SHOWN)."""
    head = [str(n) for n in lines[:MAX_SHOWN]]
    more = f" and {len(lines) - len(head)} more" if len(lines) > len(head) else ""
    vals = "" if values is None else f" (values {', '.join(values)})"
    return f"line{'s' if len(lines) > 1 else ''} {', '.join(head)}{more}{vals}"


def _numeric(col: pd.Series, name: str, source: str, line: np.ndarray) -> np.ndarray:
    """Column as finite float64 within the float32 range, or DataError naming the
    non-numeric / NaN / inf / out-of-range lines."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        num = col
    else:
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna()
        if bad.any():
            raise DataError(f"{source}: column {name!r} must be numeric; {_lines(bad, col, line)}")
    arr = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{source}: column {name!r} has NaN/inf at {_lines(bad, col, line)}")
    bad = np.abs(arr) > F32_MAX  # models train in float32: such a value becomes inf
    if bad.any():
        raise DataError(
            f"{source}: column {name!r} is outside the float32 range (|x| > {F32_MAX:.4g}) "
            f"at {_lines(bad, col, line)}"
        )
    return arr


def _dates(col: pd.Series, source: str, line: np.ndarray) -> pd.Series:
    """Column as datetime64, or DataError naming the unparseable lines."""
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = col
    elif pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise DataError(
            f"{source}: column 'ds' holds numbers, not dates; {_lines(col.notna(), col, line)}"
        )
    else:
        parsed = pd.to_datetime(col, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        raise DataError(f"{source}: column 'ds' has unparseable dates at {_lines(bad, col, line)}")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed


def _merge_duplicates(out, feature_cols, duplicates, source, repair) -> pd.DataFrame:
    dup = out.duplicated(["unique_id", "ds"], keep=False)
    if not dup.any():
        return out
    groups = out[dup].groupby(["unique_id", "ds"], sort=False)["_line"].agg(list)
    if duplicates == "error":
        shown = "; ".join(
            f"({uid}, {ds.date()}) at lines {', '.join(map(str, lines))}"
            for (uid, ds), lines in list(groups.items())[:MAX_SHOWN]
        )
        more = f"; and {len(groups) - MAX_SHOWN} more" if len(groups) > MAX_SHOWN else ""
        raise DataError(
            f"{source}: duplicate (unique_id, ds) rows: {shown}{more}; "
            "pass duplicates='sum' to add them up"
        )
    agg = {"y": "sum", "_line": "min", **{c: "mean" for c in feature_cols}}
    merged = out.groupby(["unique_id", "ds"], sort=False, as_index=False).agg(agg)
    repair(
        f"summed {int(dup.sum())} duplicate rows into {len(groups)} (unique_id, ds) rows "
        f"(y summed, features averaged; first at lines {groups.iloc[0]})"
    )
    return merged[out.columns]


def _sort(out: pd.DataFrame, repair) -> pd.DataFrame:
    backwards = out.groupby("unique_id", sort=False)["ds"].diff() < pd.Timedelta(0)
    if backwards.any():
        bad_ids = pd.unique(out.loc[backwards, "unique_id"])
        repair(
            f"sorted the dates of {len(bad_ids)} series that were out of order "
            f"(e.g. {list(bad_ids[:MAX_SHOWN])}; at {_fmt_lines(out.loc[backwards, '_line'].to_numpy())})"
        )
    return out.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def infer_freq(ds: pd.Series, ids: pd.Series, source: str) -> str:
    """Most common step between consecutive dates of a series (frame sorted by id, ds)."""
    steps = ds.diff()[ids.eq(ids.shift())]
    if steps.empty:
        raise DataError(f"{source}: cannot infer freq: every series has a single date; pass freq")
    step = steps.mode().iloc[0]
    if step == pd.Timedelta(days=7):
        freq = f"W-{WEEKDAYS[int(ds.dt.day_of_week.mode().iloc[0])]}"
    elif step % pd.Timedelta(days=1) == pd.Timedelta(0):
        freq = "D" if step.days == 1 else f"{step.days}D"
    else:
        freq = pd.tseries.frequencies.to_offset(step).freqstr
    logger.info("%s: inferred freq %r (most common step %s)", source, freq, step)
    return freq


def _fill_gaps(out, feature_cols, freq, source, repair) -> pd.DataFrame:
    """Places every row on one calendar and fills missing dates inside each series."""
    calendar = pd.date_range(out["ds"].min(), out["ds"].max(), freq=freq)
    pos = calendar.get_indexer(out["ds"])
    off = pos < 0
    if off.any():
        bad = out[off].sort_values("_line")
        dates = [str(d) for d in bad["ds"].iloc[:MAX_SHOWN]]
        raise DataError(
            f"{source}: column 'ds' has {len(bad)} dates off the regular {freq!r} calendar "
            f"starting {calendar[0]}: {_fmt_lines(bad['_line'].to_numpy(), dates)}; "
            "pass the right freq"
        )
    codes, uniques = pd.factorize(out["unique_id"], sort=False)  # frame is sorted by id
    first = np.full(len(uniques), np.iinfo(np.int64).max)
    np.minimum.at(first, codes, pos)
    last = np.zeros(len(uniques), np.int64)
    np.maximum.at(last, codes, pos)
    lengths = last - first + 1
    n_full = int(lengths.sum())
    out = out.drop(columns="_line")
    if n_full == len(out):
        return out
    offsets = np.cumsum(lengths) - lengths
    series = np.repeat(np.arange(len(uniques)), lengths)
    full_pos = first[series] + np.arange(n_full) - offsets[series]
    dest = offsets[codes] + pos - first[codes]  # row of each input record in the full frame
    have = np.zeros(n_full, bool)
    have[dest] = True
    source_row = np.zeros(n_full, np.int64)
    source_row[dest] = np.arange(len(out))
    # Each series starts with a real record, so the running max never crosses series.
    carry = source_row[np.maximum.accumulate(np.where(have, np.arange(n_full), 0))]
    y = np.zeros(n_full)
    y[dest] = out["y"].to_numpy()
    filled = pd.DataFrame(
        {
            "unique_id": uniques[series],
            "ds": calendar[full_pos],
            "y": y,
            **{c: out[c].to_numpy()[carry] for c in feature_cols},
        }
    )
    gapped = np.flatnonzero(lengths > np.bincount(codes, minlength=len(uniques)))
    repair(
        f"filled {n_full - len(out)} missing dates in {len(gapped)} series on the {freq!r} "
        f"calendar (y=0, features forward-filled; e.g. {list(uniques[gapped[:MAX_SHOWN]])})"
    )
    return filled
