"""Training logs: rows of scalar metrics appended to a CSV and a JSONL file side by side."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Row = dict[str, Any]


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flattens a (nested) dict of scalar arrays into ``{"a/b": float}``.

    Args:
      metrics: mapping of names to scalars (jax/numpy 0-d or size-1 arrays, Python
        numbers) or nested mappings of those.
      prefix: prepended to every name (e.g. ``"val_"``).

    Raises:
      ValueError: a value with more than one element, naming its key.
    """
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(scalar_metrics(value, f"{prefix}{name}/"))
            continue
        arr = np.asarray(value)
        if arr.size != 1:
            raise ValueError(f"metric {prefix}{name!s} has shape {arr.shape}; log scalars only")
        out[f"{prefix}{name}"] = float(arr.reshape(()))
    return out


class MetricsLog:
    """Appends rows to ``<path>.csv`` and ``<path>.jsonl`` (suffix of ``path`` replaced).

    Each row is a flat dict (e.g. ``{"step": 10, "phase": "train", "loss": 0.3}``). The
    JSONL file is the source of truth, one row per line, written and flushed row by
    row. The CSV holds the same rows with the union of all keys as columns (blank when
    absent); it is rewritten whenever a new key appears.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.jsonl_path = path.with_suffix(".jsonl")
        self.csv_path = path.with_suffix(".csv")
        self.rows: list[Row] = []
        self._columns: list[str] = []

    def restart(self, step: int) -> list[Row]:
        """Keeps the logged rows with ``row["step"] <= step`` and drops the rest.

        Called when a run (re)starts from a checkpoint at ``step`` (0 for a fresh run),
        so the files hold exactly the rows an uninterrupted run would have written.
        A truncated last line (process killed mid-write) is dropped with a warning.

        Returns:
          The kept rows (also in ``self.rows``).

        Raises:
          ValueError: a corrupt line other than the last, naming file and line.
        """
        rows = []
        if self.jsonl_path.exists():
            lines = self.jsonl_path.read_text().splitlines()
            for i, line in enumerate(lines):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    if i < len(lines) - 1:
                        raise ValueError(f"{self.jsonl_path}:{i + 1}: corrupt log line") from err
                    logger.warning("%s:%d: dropped truncated last line", self.jsonl_path, i + 1)
        self.rows = [r for r in rows if r["step"] <= step]
        self._columns = []
        self._update_columns(self.rows)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._rewrite_csv()
        return self.rows

    def append(self, row: Row) -> None:
        """Appends one row to both files."""
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            logger.warning("step %s: non-finite metrics %s", row.get("step"), bad)
        self.rows.append(row)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._update_columns([row]) or not self.csv_path.exists():
            self._rewrite_csv()
        else:
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, self._columns).writerow(row)

    def _update_columns(self, rows: list[Row]) -> bool:
        new = [k for r in rows for k in r if k not in self._columns]
        self._columns.extend(dict.fromkeys(new))
        return bool(new)

    def _rewrite_csv(self) -> None:
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self._columns)
            writer.writeheader()
            writer.writerows(self.rows)
