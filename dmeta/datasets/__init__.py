"""The dataset registry: one module per public source and per generic format.

``LOADERS[name](path, **options)`` reads and checks a source into tidy frames (ids as text,
every problem a located ``DataError`` or a logged repair; see ``dmeta.datasets._csv``).
Each paper adapts a loaded source to its own container in its protocol. ``validate`` checks
a ``--data`` spec without running anything.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from dmeta.datasets import (
    cainiao,
    cdnow,
    completejourney,
    events,
    favorita,
    frat,
    groceries,
    itemlog,
    jdata,
    rees46,
    rossmann,
    table,
    transactions,
    userbehavior,
    walmart,
)

LOADERS = {
    "walmart": walmart.load,
    "groceries": groceries.load,
    "completejourney": completejourney.load,
    "favorita": favorita.load,
    "rossmann": rossmann.load,
    "frat": frat.load,
    "cainiao": cainiao.load,
    "cdnow": cdnow.load,
    "userbehavior": userbehavior.load,
    "jdata": jdata.load,
    "rees46": rees46.load,
    "table": table.load,
    "transactions": transactions.load,
    "events": events.load,
    "itemlog": itemlog.load,
}
ID_HINTS = ("id", "store", "dept", "member", "item", "store_nbr", "customer_id", "user_id")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load(spec: str, **options):
    """``--data`` spec ``NAME[:PATH]`` -> the loaded source (``DataError`` if unknown)."""
    from dmeta.data.frames import DataError
    from dmeta.data.spec import parse_data_spec

    parsed = parse_data_spec(spec)
    if parsed.name not in LOADERS:
        raise DataError(f"--data {spec!r}: unknown dataset; known: {', '.join(LOADERS)}")
    return LOADERS[parsed.name](parsed.path, **options)


def validate(spec: str) -> str:
    """Loads ``spec`` (``NAME[:PATH]``) with every check and returns a summary: per table
    its rows, distinct ids and date range, then the repairs made (one per line).

    Raises:
      DataError: the first problem found, naming file, column and line.
    """
    handler = _Collect()
    root = logging.getLogger("dmeta")
    root.addHandler(handler)
    try:
        loaded = load(spec)
    finally:
        root.removeHandler(handler)
    path = next((getattr(loaded, f.name) for f in dataclasses.fields(loaded)
                 if isinstance(getattr(loaded, f.name), Path)), "?")  # fmt: skip
    lines = [f"{spec}: {type(loaded).__name__} from {path}"]
    for field in dataclasses.fields(loaded):
        value = getattr(loaded, field.name)
        if isinstance(value, pd.DataFrame):
            lines.append(f"  {field.name}: {_describe(value)}")
    lines.append(f"  repairs: {len(handler.messages)}")
    lines += [f"    - {m}" for m in handler.messages]
    return "\n".join(lines)


def _describe(frame: pd.DataFrame) -> str:
    parts = [f"{len(frame)} rows"]
    for col in frame.columns:
        if col == "_line":
            continue
        if pd.api.types.is_datetime64_any_dtype(frame[col]):
            parts.append(f"{col} {frame[col].min().date()} .. {frame[col].max().date()}")
        elif col in ID_HINTS or col.endswith("_id"):
            parts.append(f"{frame[col].nunique()} {col}")
    return ", ".join(parts)
