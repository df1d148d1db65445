"""The C2M event log: ``EventLog`` and its adapter from the event-log sources of
``dmeta.datasets`` (``userbehavior``, ``jdata``, ``rees46``, ``events``).

``events`` has the columns ``user_id, item_id, category_id`` (i64 when every id of a column
is a canonical integer, else the text ids: distinct ids are never merged), ``behavior`` (one
of ``BEHAVIORS``) and ``timestamp`` (i64 seconds), sorted by user and time; ``attributes``
holds ``item_id`` and one column per discrete attribute, or is None.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from dmeta.datasets import _csv
from dmeta.datasets.events import BEHAVIORS, COLUMNS, ID_COLUMNS, Events

__all__ = ["BEHAVIORS", "COLUMNS", "EVENT_SOURCES", "EventLog", "event_log"]

EVENT_SOURCES = ("userbehavior", "jdata", "rees46", "events")


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
