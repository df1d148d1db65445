"""Taobao UserBehavior: headerless ``user_id,item_id,category_id,behavior_type,timestamp``
(pv/cart/fav/buy, unix seconds); ``path`` is a file or a folder of CSV files. Read by C2M."""

from __future__ import annotations

from pathlib import Path

from dmeta.datasets import _csv, events

NAMES = ("user_id", "item_id", "category_id", "type", "timestamp")
MAPPING = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}


def load(path: str | Path) -> events.Events:
    """Reads the UserBehavior file(s) at ``path`` (checks as ``dmeta.datasets.events``)."""
    frames = []
    for file in events.files(path, "*.csv"):
        raw = _csv.read(file, names=NAMES)
        raw = events.behaviors(raw, file, "type", MAPPING)
        frames.append(events.seconds(events.ids(raw, file), file, "timestamp", unix=True))
    return events.Events(events.finish(frames, Path(path)), None, Path(path))
