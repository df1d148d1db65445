"""Kaggle Corporacion Favorita (store sales): stores, daily transactions, holidays and events.

Files: ``stores.csv`` (store_nbr, city, state, type, cluster), ``transactions.csv`` (date,
store_nbr, transactions) and ``holidays_events.csv`` (date, type, locale, locale_name,
description, transferred). Each holiday row gets its festival ``kind`` (``KINDS``; None: not
a festival for any store). Read by STMP (stores as regions).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dmeta.datasets import _csv

KINDS = ("christmas_eve", "christmas", "new_year", "black_friday", "cyber_monday", "mothers_day",
         "national_holiday", "regional_holiday", "local_holiday", "event")  # fmt: skip
# in priority order: when several apply to a (store, day), the first wins


@dataclasses.dataclass(frozen=True, eq=False)
class Favorita:
    """stores: store_nbr, city, state, type, cluster; transactions: date, store_nbr,
    transactions, _line; holidays: date, locale, locale_name, kind, _line."""

    stores: pd.DataFrame
    transactions: pd.DataFrame
    holidays: pd.DataFrame
    transactions_path: Path


def kind(description: str, type_: str, locale: str, transferred: bool) -> str | None:
    """Festival kind of one holidays_events row (None: not a festival for any store)."""
    desc = description.removeprefix("Traslado ")  # a transferred holiday keeps its kind
    if type_ == "Work Day" or transferred:
        return None
    if desc == "Navidad-1":
        return "christmas_eve"
    for prefix, name in (("Navidad", "christmas"), ("Primer dia del ano", "new_year"),
                         ("Black Friday", "black_friday"), ("Cyber Monday", "cyber_monday"),
                         ("Dia de la Madre", "mothers_day")):  # fmt: skip
        if desc.startswith(prefix):
            return name
    if type_ == "Event":
        return "event"
    return {"National": "national_holiday", "Regional": "regional_holiday"}.get(
        locale, "local_holiday"
    )


def load(
    path: str | Path,
    *,
    date_format: str | None = None,
    max_gap_days: float | None = _csv.MAX_GAP_DAYS,
) -> Favorita:
    """Reads and checks the three Favorita files in folder ``path``."""
    folder = _csv.existing(path, folder=True, hint=" holding stores.csv")
    src = folder / "stores.csv"
    raw = _csv.read(src, required=("store_nbr", "city", "state", "type", "cluster"))
    stores = raw[["city", "state", "type", "cluster"]].assign(
        store_nbr=_csv.ids(raw, src, "store_nbr")
    )
    _csv.check(raw, src, "store_nbr", stores["store_nbr"].duplicated().to_numpy(), "repeats")

    tx_src = folder / "transactions.csv"
    raw = _csv.read(tx_src, required=("date", "store_nbr", "transactions"))
    tx = pd.DataFrame({
        "date": _csv.dates(raw, tx_src, "date", date_format=date_format,
                           max_gap_days=max_gap_days),
        "store_nbr": _csv.ids(raw, tx_src, "store_nbr"),
        "transactions": _csv.numbers(raw, tx_src, "transactions", nonneg=True),
        "_line": raw["_line"],
    })  # fmt: skip
    unknown = ~tx["store_nbr"].isin(stores["store_nbr"]).to_numpy()
    _csv.check(tx, tx_src, "store_nbr", unknown, "is not a store of stores.csv")

    hol_src = folder / "holidays_events.csv"
    cols = ("date", "type", "locale", "locale_name", "description", "transferred")
    raw = _csv.read(hol_src, required=cols)
    locale = _csv.text(raw, hol_src, "locale")
    bad = ~locale.isin(["National", "Regional", "Local"]).to_numpy()
    _csv.check(raw, hol_src, "locale", bad, "is not National/Regional/Local")
    transferred = _csv.flags(raw, hol_src, "transferred")
    kinds = [kind(d, t, lo, tr) for d, t, lo, tr in
             zip(raw["description"], raw["type"], locale, transferred, strict=True)]  # fmt: skip
    holidays = pd.DataFrame({
        "date": _csv.dates(raw, hol_src, "date", date_format=date_format, max_gap_days=None),
        "locale": locale,
        "locale_name": raw["locale_name"],
        "kind": kinds,
        "_line": raw["_line"],
    })  # fmt: skip
    return Favorita(stores, tx, holidays, tx_src)
