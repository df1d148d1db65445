"""JData 2016 actions ``user_id,sku_id,time,model_id,type,cate,brand`` (type 1 browse, 2 cart,
3 remove, 4 buy, 5 follow, 6 click) in ``*Action*.csv``; ``JData_Product.csv`` (``sku_id,a1,
a2,a3,cate,brand``) beside them gives the attributes a1-a3. Read by C2M."""

from __future__ import annotations

from pathlib import Path

from dmeta.datasets import _csv, events

MAPPING = {"1": "view", "2": "cart", "3": "remove", "4": "buy", "5": "follow", "6": "click"}


def load(path: str | Path) -> events.Events:
    """Reads the JData action files at ``path`` (checks as ``dmeta.datasets.events``)."""
    path = Path(path)
    frames = []
    for file in events.files(path, "*Action*.csv"):
        raw = _csv.read(file, required=("user_id", "sku_id", "time", "type", "cate"))
        raw = raw.rename(columns={"sku_id": "item_id", "cate": "category_id"})
        raw = events.behaviors(raw, file, "type", MAPPING)
        # user ids are written as floats in the original files (``7.0``)
        raw = raw.assign(user_id=raw["user_id"].str.replace(r"\.0$", "", regex=True))
        frames.append(events.seconds(events.ids(raw, file), file, "time", unix=False))
    product = (path if path.is_dir() else path.parent) / "JData_Product.csv"
    attributes = None
    if product.exists():
        attributes = events.item_attributes(product, {"sku_id": "item_id"},
                                            ["item_id", "a1", "a2", "a3"])  # fmt: skip
    return events.Events(events.finish(frames, path), attributes, path)
