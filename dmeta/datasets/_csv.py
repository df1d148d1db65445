"""The one validation layer of every loader: reading files, ids, numbers, dates, located errors.

Every file is read with all columns as text (``dtype=str``, ``keep_default_na=False``), so
ids stay strings (``007`` and ``7`` are two ids; ``NA``, ``None`` and ``1e30`` are ids like
any other) and each column is converted by one function here that checks it. Each read
frame carries ``_line``: the physical 1-based line of the row in its file (the header is line
1; a quoted field spanning lines and blank lines are counted), or the 1-based row of a
parquet file. Bad input raises ``DataError`` as ``FILE: column C, line N: what (values ...)``;
a fixable problem is repaired and logged (``logging.WARNING`` on the ``dmeta.datasets``
logger) with the same location, never silently.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.data.frames import F32_MAX, DataError

logger = logging.getLogger("dmeta.datasets")

MAX_GAP_DAYS = 366  # a longer calendar gap is refused unless max_gap_days allows it
MAX_SHOWN = 5
PARQUET = (".parquet", ".pq")
MISSING = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A"})
_INT_ID = re.compile(r"^(0|-?[1-9][0-9]{0,17})$")  # canonical and within int64
_DAY_MONTH = re.compile(r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})$")
_OFFSET = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(Z|UTC|[+-]\d{2}:?\d{2})$")


def repair(source: str | Path, msg: str) -> None:
    """Logs a repair made to the data of ``source``."""
    logger.warning("%s: %s", source, msg)


def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` names a parquet file (any case: ``.PARQUET`` too)."""
    return any(s.lower() in PARQUET for s in Path(path).suffixes)


# ----------------------------------------------------------------------------- locations


def where(source: str | Path, lines: Sequence[int]) -> str:
    """``line 5`` / ``lines 5, 9 and 3 more`` (``row`` for a parquet file)."""
    lines = [int(n) for n in lines]
    word = "row" if is_parquet(source) else "line"
    head = ", ".join(map(str, lines[:MAX_SHOWN]))
    more = f" and {len(lines) - MAX_SHOWN} more" if len(lines) > MAX_SHOWN else ""
    return f"{word}{'s' if len(lines) > 1 else ''} {head}{more}"


def located(source, column: str, lines: Sequence[int], what: str, values=None) -> str:
    """``FILE: column C, line N: what (values ...)``."""
    shown = "" if values is None else f" (values {', '.join(repr(v) for v in values[:MAX_SHOWN])})"
    return f"{source}: column {column!r}, {where(source, lines)}: {what}{shown}"


def check(frame: pd.DataFrame, source, column: str, bad, what: str, values=None) -> None:
    """Raises DataError naming file, column and the lines of the True entries of ``bad``."""
    bad = np.asarray(bad, bool)
    if bad.any():
        shown = list((frame[column] if values is None else values)[bad][:MAX_SHOWN])
        raise DataError(located(source, column, frame["_line"].to_numpy()[bad], what, shown))


def drop_rows(frame: pd.DataFrame, source, column: str, bad, why: str) -> pd.DataFrame:
    """Drops the rows where ``bad`` holds, logging file, column and lines (a repair)."""
    bad = np.asarray(bad, bool)
    if not bad.any():
        return frame
    lines = frame["_line"].to_numpy()[bad]
    repair(source, f"dropped {int(bad.sum())} rows with {why} in column {column!r} "
                   f"({where(source, lines)})")  # fmt: skip
    return frame.loc[~bad].reset_index(drop=True)


def log_duplicates(frame: pd.DataFrame, source, columns: Sequence[str], action: str) -> np.ndarray:
    """bool[N]: rows repeating an earlier row in ``columns``; logged as ``action`` when any."""
    dup = frame.duplicated(list(columns)).to_numpy()
    if dup.any():
        lines = frame["_line"].to_numpy()[dup]
        repair(source, f"{int(dup.sum())} exact duplicate rows ({', '.join(columns)}) "
                       f"{action} ({where(source, lines)})")  # fmt: skip
    return dup


# ----------------------------------------------------------------------------- files


def existing(path: str | Path, *, folder: bool = False, hint: str = "") -> Path:
    """``path`` if it exists as a file (or a folder with ``folder``), else DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found{hint}")
    if folder and not path.is_dir():
        raise DataError(f"{path}: is a file; expected a folder{hint}")
    if not folder and path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file{hint}")
    return path


def find(folder: str | Path, names: Sequence[str]) -> Path:
    """The first of ``folder/name`` (glob patterns allowed) that exists, else DataError."""
    folder = existing(folder, folder=True, hint=f" holding {' or '.join(names)}")
    for name in names:
        found = sorted(p for p in folder.glob(name) if p.is_file())
        if found:
            return found[0]
    raise DataError(f"{folder}: none of {', '.join(names)} found")


def _text(path: Path) -> str:
    """The decoded text of a (possibly compressed) file; Latin-1 when not UTF-8 (logged)."""
    with pd.io.common.get_handle(path, "rb", compression="infer", is_text=False) as handle:
        raw = handle.handle.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        repair(path, f"not UTF-8 (byte {raw[err.start]:#x} on line {line}); decoded as Latin-1")
        return raw.decode("latin-1")


def _record_starts(text: str, sep: str) -> tuple[np.ndarray, np.ndarray]:
    """(physical first line, field count) of every non-blank CSV record."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    starts, widths, prev = [], [], 0
    for record in reader:
        if record:
            starts.append(prev + 1)
            widths.append(len(record))
        prev = reader.line_num
    return np.asarray(starts, np.int64), np.asarray(widths, np.int64)


def read(
    path: str | Path,
    *,
    required: Sequence[str] = (),
    names: Sequence[str] | None = None,
    sep: str | None = None,
) -> pd.DataFrame:
    """A CSV (optionally compressed) or parquet file as text columns plus ``_line``.

    Args:
      path: the file; ``.parquet``/``.pq`` (any case) as parquet (columns keep their types).
      required: columns that must be present.
      names: column names of a headerless file (None: the first line is the header).
      sep: the delimiter (None: ``,``, or ``;`` when the header has ``;`` and no ``,``).

    Raises:
      DataError: a missing file, a folder, an empty or header-only file, a ragged row or a
        missing column, naming the file (and the line).
    """
    path = existing(path)
    if is_parquet(path):
        return _read_parquet(path, required)
    text = _text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    first = text.split("\n", 1)[0]
    sep = sep or (";" if names is None and ";" in first and "," not in first else ",")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                            header=None if names else 0, names=names, index_col=False)  # fmt: skip
    except (pd.errors.ParserError, ValueError) as err:
        frame, failure = None, err
    starts, widths = _record_starts(text, sep)
    expected = len(names) if names else (widths[0] if len(widths) else 0)
    ragged = np.flatnonzero(widths != expected)
    if len(ragged):
        i = int(ragged[0])
        cols = list(names) if names else next(csv.reader([first.strip()], delimiter=sep))
        short = widths[i] < expected
        column = cols[widths[i]] if short else cols[-1]
        what = "missing (a short row)" if short else "followed by extra fields (a long row)"
        raise DataError(f"{path}: column {column!r}, {where(path, [starts[i]])}: {what}; "
                        f"{widths[i]} fields, expected {expected}")  # fmt: skip
    if frame is None:
        raise DataError(f"{path}: not a readable CSV file ({failure})")
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows (only the header, line 1)")
    _require(frame, required, path)
    return frame.assign(_line=starts[len(starts) - len(frame) :])


def _read_parquet(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    _require(frame, required, path)
    return frame.assign(_line=np.arange(1, len(frame) + 1))


def _require(frame: pd.DataFrame, required: Sequence[str], path) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = [c for c in frame.columns if c != "_line"]
        raise DataError(f"{path}: missing column(s) {missing}; columns found: {found}")


# ----------------------------------------------------------------------------- columns


def _text_column(frame: pd.DataFrame, column: str, strip: bool = True) -> pd.Series:
    col = frame[column]
    if col.dtype == object or pd.api.types.is_string_dtype(col):
        values = col.astype(object).where(col.notna(), "").astype(str)
        return values.str.strip() if strip else values
    return col.astype(str).where(col.notna(), "")


def ids(frame: pd.DataFrame, source, column: str) -> pd.Series:
    """The column as text ids (surrounding blanks stripped); an empty id raises."""
    values = _text_column(frame, column)
    check(frame, source, column, (values == "").to_numpy(), "is an empty id")
    return values


def text(frame: pd.DataFrame, source, column: str, *, allow_empty: bool = False) -> pd.Series:
    """The column as text (kept as written); an empty cell raises unless ``allow_empty``."""
    values = _text_column(frame, column, strip=False)
    if not allow_empty:
        check(frame, source, column, (values.str.strip() == "").to_numpy(), "is empty")
    return values


def numbers(
    frame: pd.DataFrame,
    source,
    column: str,
    *,
    nonneg: bool = False,
    allow_empty: bool = False,
    integer: bool = False,
) -> np.ndarray:
    """f64[N]: finite numbers within the float32 range (empty cells NaN with ``allow_empty``).

    Raises:
      DataError: a non-number, an empty cell, NaN/inf, |x| above the float32 maximum, a
        negative value (``nonneg``) or a fraction (``integer``), naming file, column, lines.
    """
    col = frame[column]
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(np.float64, na_value=np.nan)
        empty = np.isnan(values) if allow_empty else np.zeros(len(values), bool)
        raw = col
    else:
        raw = _text_column(frame, column)
        empty = raw.isin(MISSING).to_numpy()
        values = pd.to_numeric(raw.where(~empty), errors="coerce").to_numpy(np.float64)
        check(frame, source, column, np.isnan(values) & ~empty, "is not a number", raw)
        if not allow_empty:
            check(frame, source, column, empty, "is empty", raw)
            empty = np.zeros(len(values), bool)
    check(frame, source, column, ~np.isfinite(values) & ~empty, "is NaN or infinite", raw)
    with np.errstate(invalid="ignore"):
        check(frame, source, column, np.abs(values) > F32_MAX,
              f"is outside the float32 range (|x| > {F32_MAX:.4g})", raw)  # fmt: skip
        if nonneg:
            check(frame, source, column, values < 0, "is negative", raw)
        if integer:
            check(frame, source, column, values != np.floor(values), "is not an integer", raw)
    return values


def flags(frame: pd.DataFrame, source, column: str) -> np.ndarray:
    """bool[N] from TRUE/FALSE (any case) or a bool column."""
    col = frame[column]
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(bool)
    raw = _text_column(frame, column).str.upper()
    check(frame, source, column, ~raw.isin(["TRUE", "FALSE"]).to_numpy(), "is not TRUE/FALSE")
    return (raw == "TRUE").to_numpy()


def dates(
    frame: pd.DataFrame,
    source,
    column: str,
    *,
    date_format: str | None = None,
    max_gap_days: float | None = MAX_GAP_DAYS,
) -> pd.Series:
    """The column as naive datetime64.

    Without ``date_format`` the format is inferred; day/month dates (``03/04/2021``) are read
    day first or month first only when a value above 12 decides it, else DataError showing
    both readings. One timezone offset throughout is dropped (local times kept, logged);
    mixed offsets, or offsets on some rows only, raise. A gap between consecutive distinct
    dates longer than ``max_gap_days`` raises (None allows any gap).
    """
    col = frame[column]
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = col
        if getattr(col.dt, "tz", None) is not None:
            repair(
                source, f"column {column!r}: dropped the timezone {col.dt.tz} (local times kept)"
            )
            parsed = col.dt.tz_localize(None)
        raw = col.astype(str)
    elif pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise DataError(located(source, column, frame["_line"].to_numpy()[:1],
                                "holds numbers, not dates", list(col[:1])))  # fmt: skip
    else:
        raw = _text_column(frame, column)
        parsed = _parse(frame, source, column, drop_offset(frame, source, column, raw),
                        date_format)  # fmt: skip
    check(frame, source, column, parsed.isna().to_numpy(),
          f"is not a date{f' in the format {date_format!r}' if date_format else ''}", raw)  # fmt: skip
    parsed = pd.Series(parsed.to_numpy(), index=frame.index, name=column)
    check_gap(frame, source, column, parsed, max_gap_days)
    return parsed


def drop_offset(frame, source, column: str, raw: pd.Series) -> pd.Series:
    """``raw`` without its timezone offset when all rows share one (logged); mixed raise."""
    offset = raw.str.extract(_OFFSET, expand=False)
    has = offset.notna().to_numpy()
    if not has.any():
        return raw
    kinds = offset[has].str.replace(":", "").unique()
    if len(kinds) > 1 or not has.all():
        first = {k: int(np.flatnonzero((offset.str.replace(":", "") == k).to_numpy())[0])
                 for k in kinds[:2]}  # fmt: skip
        if not has.all():
            first["no offset"] = int(np.flatnonzero(~has)[0])
        shown = "; ".join(f"{k} at {where(source, [frame['_line'].iloc[i]])}"
                          for k, i in first.items())  # fmt: skip
        raise DataError(f"{source}: column {column!r} mixes timezone offsets ({shown}); "
                        "give every timestamp in one offset")  # fmt: skip
    repair(source, f"column {column!r}: dropped the timezone offset {kinds[0]} (local times kept)")
    return raw.str.replace(r"\s*(Z|UTC|[+-]\d{2}:?\d{2})$", "", regex=True)


def _parse(frame, source, column: str, raw: pd.Series, date_format: str | None) -> pd.Series:
    if date_format is None:
        date_format = _day_month_format(frame, source, column, raw)
    if date_format is not None:
        return pd.to_datetime(raw, format=date_format, errors="coerce")
    parsed = pd.to_datetime(raw, errors="coerce")
    return pd.to_datetime(raw.where(parsed.notna()), errors="coerce")


def _day_month_format(frame, source, column: str, raw: pd.Series) -> str | None:
    """The format of D/M/Y or M/D/Y dates when the values decide it, else DataError."""
    parts = raw.str.extract(_DAY_MONTH)
    if parts[0].isna().any():
        return None
    a, b = parts[0].astype(int).to_numpy(), parts[2].astype(int).to_numpy()
    sep, year = parts[1].iloc[0], "%Y" if len(parts[3].iloc[0]) == 4 else "%y"
    day_first, month_first = f"%d{sep}%m{sep}{year}", f"%m{sep}%d{sep}{year}"
    if (a > 12).any() or (b > 12).any():  # decided (values invalid either way then raise)
        return day_first if (a > 12).sum() >= (b > 12).sum() else month_first
    if (a == b).all():
        return month_first
    i = int(np.flatnonzero(a != b)[0])
    value = raw.iloc[i]
    readings = [pd.to_datetime(value, format=f).date() for f in (month_first, day_first)]
    raise DataError(
        f"{located(source, column, [frame['_line'].iloc[i]], 'has ambiguous day/month dates')}"
        f": {value!r} reads as {readings[0]} (month first) or {readings[1]} (day first); "
        f"pass date_format (e.g. {day_first!r})"
    )


def check_gap(frame, source, column: str, ds: pd.Series, max_gap_days: float | None) -> None:
    """Raises when consecutive distinct dates are more than ``max_gap_days`` apart."""
    days = np.unique(ds.to_numpy())
    if max_gap_days is None or len(days) < 2:
        return
    gaps = np.diff(days) / np.timedelta64(1, "D")
    k = int(np.argmax(gaps))
    if gaps[k] > max_gap_days:
        after = frame["_line"].to_numpy()[(ds == days[k + 1]).to_numpy()]
        raise DataError(located(
            source, column, after,
            f"{gaps[k]:.0f}-day gap from {pd.Timestamp(days[k]).date()} to "
            f"{pd.Timestamp(days[k + 1]).date()} (limit {max_gap_days:g} days; a typo? "
            "pass max_gap_days=None to allow it)",
        ))  # fmt: skip


# ----------------------------------------------------------------------------- id order


def natural_ids(values) -> np.ndarray:
    """Ids as i64 when every one is a canonical decimal integer (``7``, not ``007`` or
    ``1.5``: a lossless change), else as the strings (object)."""
    values = np.asarray(values, dtype=object).astype(str)
    if len(values) and all(_INT_ID.match(v) for v in pd.unique(values)):
        return values.astype(np.int64)
    return values.astype(object)


def id_order(values) -> np.ndarray:
    """The distinct ids of ``values`` sorted numerically when all are canonical integers,
    else as text; returned as given (strings)."""
    unique = pd.unique(np.asarray(values, dtype=object))
    key = natural_ids(unique)
    return unique[np.argsort(key, kind="stable")]
