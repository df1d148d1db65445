"""Experiment configs: frozen dataclasses with ``get_config(smoke)`` per experiment."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

Config = TypeVar("Config")


def add_data_parallel_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--data-parallel`` (config field ``data_parallel``): ``what`` runs on all visible
    devices (``dmeta.parallel``; one device runs the same code path)."""
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        default=None,
        help=f"split {what} over all visible devices (jax.sharding), parameters replicated",
    )


def with_overrides(cfg: Config, **values: Any) -> Config:
    """``cfg`` with the fields given on the command line replaced (``None`` means not given)."""
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if v is not None})
