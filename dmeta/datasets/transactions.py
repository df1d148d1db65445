"""Generic purchases: ``customer_id, timestamp, amount, domain`` (domain source|target).

``path`` is a CSV/parquet file, or a folder with ``transactions.*`` and an optional
``attributes.*`` (``customer_id`` + categorical columns). Exact duplicate rows are kept (two
equal purchases are possible) and logged. Read by CDLtvS (and by ``cdnow`` for its generic
files, where ``domain`` is optional).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.datasets import _csv

COLUMNS = ("customer_id", "timestamp", "amount", "domain")


@dataclasses.dataclass(frozen=True, eq=False)
class Transactions:
    """tx: customer_id, timestamp, amount, domain, _line; attributes: customer_id + text
    columns, or None."""

    tx: pd.DataFrame
    attributes: pd.DataFrame | None
    path: Path


def load(
    path: str | Path,
    *,
    require_domain: bool = True,
    max_gap_days: float | None = _csv.MAX_GAP_DAYS,
) -> Transactions:
    """Reads and checks the purchases (and attributes) at ``path``."""
    path = Path(path)
    attr_path = None
    if path.is_dir():
        file = _csv.find(path, ("transactions.csv", "transactions.parquet", "transactions.*"))
        found = sorted(p for p in path.glob("attributes.*") if p.is_file())
        attr_path = found[0] if found else None
    else:
        file = path
    raw = _csv.read(file, required=COLUMNS if require_domain else COLUMNS[:3])
    domain = (_csv.text(raw, file, "domain", allow_empty=True) if "domain" in raw.columns
              else pd.Series("target", index=raw.index))  # fmt: skip
    if require_domain:
        bad = ~domain.isin(["source", "target"]).to_numpy()
        _csv.check(raw, file, "domain", bad, "is not 'source' or 'target'")
    tx = pd.DataFrame({
        "customer_id": _csv.ids(raw, file, "customer_id"),
        "timestamp": _csv.dates(raw, file, "timestamp", max_gap_days=max_gap_days),
        "amount": _csv.numbers(raw, file, "amount"),
        "domain": domain,
        "_line": raw["_line"],
    })  # fmt: skip
    _csv.log_duplicates(tx, file, COLUMNS, "kept: each counts as a purchase")
    attributes = None
    if attr_path is not None:
        raw = _csv.read(attr_path, required=("customer_id",))
        attributes = raw.drop(columns="_line").assign(
            customer_id=_csv.ids(raw, attr_path, "customer_id")
        )
    return Transactions(tx, attributes, file)
