"""REES46 multi-category store: ``event_time,event_type,product_id,category_id,category_code,
brand,price,user_id,user_session`` (view/cart/remove_from_cart/purchase; times in UTC).
Attributes: brand and price decile per product. Read by C2M."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmeta.datasets import _csv, events

MAPPING = {"view": "view", "cart": "cart", "remove_from_cart": "remove", "purchase": "buy"}
COLUMNS = ("event_time", "event_type", "product_id", "category_id", "brand", "price", "user_id")


def load(path: str | Path) -> events.Events:
    """Reads the REES46 files at ``path`` (checks as ``dmeta.datasets.events``)."""
    frames, items = [], []
    for file in events.files(path, "*.csv"):
        raw = _csv.read(file, required=COLUMNS).rename(columns={"product_id": "item_id"})
        raw = events.behaviors(raw, file, "event_type", MAPPING)
        raw = raw.assign(event_time=raw["event_time"].str.replace(" UTC", ""))  # the format's zone
        raw = events.seconds(events.ids(raw, file), file, "event_time", unix=False)
        frames.append(raw)
        items.append(raw[["item_id", "brand", "price"]])
    items = pd.concat(items).drop_duplicates("item_id")
    price = pd.to_numeric(items["price"], errors="coerce")
    attributes = pd.DataFrame({
        "item_id": items["item_id"].to_numpy(),
        "brand": pd.factorize(items["brand"].replace("", "unknown"))[0],
        "price_decile": np.where(
            price.isna(), -1, np.minimum(price.rank(pct=True) * 10, 9).fillna(-1)
        ).astype(int),
    })  # fmt: skip
    return events.Events(events.finish(frames, Path(path)), attributes, Path(path))
