"""Experiment configs: frozen dataclasses with ``get_config(smoke)`` per experiment."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Config = TypeVar("Config")


def with_overrides(cfg: Config, **values: Any) -> Config:
    """``cfg`` with the fields given on the command line replaced (``None`` means not given)."""
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if v is not None})
