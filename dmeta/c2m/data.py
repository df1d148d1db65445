"""The C2M event log: ``EventLog`` and its adapters from the event-log sources of
``dmeta.datasets`` (``userbehavior``, ``jdata``, ``rees46``, ``events``) and from Complete
Journey (``completejourney_log``: households' purchase lines, baskets in time order).

``events`` has the columns ``user_id, item_id, category_id`` (i64 when every id of a column
is a canonical integer, else the text ids: distinct ids are never merged), ``behavior`` (one
of ``BEHAVIORS``) and ``timestamp`` (i64 seconds), sorted by user and time; ``attributes``
holds ``item_id`` and one column per discrete attribute, or is None.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dmeta.datasets import _csv
from dmeta.datasets.completejourney import CompleteJourney
from dmeta.datasets.events import BEHAVIORS, COLUMNS, ID_COLUMNS, Events

__all__ = [
    "BEHAVIORS", "COLUMNS", "EVENT_SOURCES", "EventLog", "completejourney_log", "event_log",
    "from_source",
]  # fmt: skip

EVENT_SOURCES = ("userbehavior", "jdata", "rees46", "events", "completejourney")
SIZE_TIERS = ("unknown", "small", "medium", "large")


@dataclasses.dataclass(frozen=True)
class EventLog:
    """events: the canonical event frame; attributes: item attributes or None."""

    events: pd.DataFrame
    attributes: pd.DataFrame | None = None


def event_log(src: Events) -> EventLog:
    """The loaded events with natural ids, sorted by user and time (stable)."""
    events = src.events.assign(**{c: _csv.natural_ids(src.events[c]) for c in ID_COLUMNS})
    events = events.astype({"behavior": "category"})
    events = events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    attributes = src.attributes
    if attributes is not None:
        attributes = attributes.assign(item_id=_csv.natural_ids(attributes["item_id"]))
    return EventLog(events, attributes)


def package_size_tiers(products: pd.DataFrame) -> pd.Series:
    """Per product a tier of ``SIZE_TIERS``: its package size (the leading number of
    ``package_size``, ``12 OZ`` -> 12) ranked among the products of its ``product_category``
    with the same unit (the last word) and cut in thirds; ``unknown`` without a parsable size."""
    text = products["package_size"].astype("string")
    amount = pd.to_numeric(text.str.extract(r"^\s*(\d+(?:\.\d+)?)")[0], errors="coerce")
    unit = text.str.extract(r"([A-Za-z]+)\s*$")[0]
    known = amount.notna() & unit.notna()
    rank = amount[known].groupby([products["product_category"][known], unit[known]]).rank(pct=True)
    tier = pd.Series("unknown", index=products.index, dtype=object)
    tier[known] = np.array(SIZE_TIERS)[np.ceil(3 * rank).astype(int).clip(1, 3)]
    return tier


def completejourney_log(src: CompleteJourney) -> EventLog:
    """Households as users, every transaction line a ``buy`` of its product (item) in its
    commodity (category: ``product_category``), sorted by household and time (a basket's
    lines keep their file order). Attributes: ``brand`` (National / Private) and ``size``
    (``package_size_tiers``); department and commodity are the same for every alternative of
    a choice among one commodity's items, so they carry no attribute choice. Lines whose
    product has no commodity are dropped (logged)."""
    products = src.products.dropna(subset=["product_category"])
    tx = src.transactions
    known = tx["product_id"].isin(products["product_id"]).to_numpy()
    if not known.all():
        _csv.repair(src.path, f"dropped {int((~known).sum())} lines whose product is not in "
                              "the product table or has no product_category")  # fmt: skip
    tx = tx[known]
    category = products.set_index("product_id")["product_category"]
    events = pd.DataFrame({
        "user_id": _csv.natural_ids(tx["household_id"]),
        "item_id": _csv.natural_ids(tx["product_id"]),
        "category_id": category.reindex(tx["product_id"]).to_numpy(),
        "behavior": pd.Categorical(["buy"] * len(tx), categories=BEHAVIORS),
        "timestamp": tx["timestamp"].to_numpy().astype("datetime64[s]").astype(np.int64),
    })  # fmt: skip
    events = events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    attributes = pd.DataFrame({
        "item_id": _csv.natural_ids(products["product_id"]),
        "brand": products["brand"].fillna("unknown").to_numpy(),
        "size": package_size_tiers(products).to_numpy(),
    })  # fmt: skip
    return EventLog(events, attributes)


def from_source(name: str, loaded) -> EventLog:
    """The ``EventLog`` of a loaded ``dmeta.datasets`` source of ``EVENT_SOURCES``."""
    return completejourney_log(loaded) if name == "completejourney" else event_log(loaded)
