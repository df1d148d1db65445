"""Nested configs: dotted paths, typed overrides, one-line errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from dmeta.config import ConfigError, flatten, format_config, format_value, override


@dataclasses.dataclass(frozen=True)
class Model:
    hidden: int = 8
    lrs: tuple[float, ...] = (1e-3, 1e-2)
    season: int | None = None
    kind: Literal["gru", "lstm"] = "gru"


@dataclasses.dataclass(frozen=True)
class Config:
    model: Model = Model()
    name: str = "x"
    flag: bool = False


def test_flatten_lists_every_leaf_by_dotted_path():
    assert flatten(Config()) == {
        "model.hidden": 8,
        "model.lrs": (1e-3, 1e-2),
        "model.season": None,
        "model.kind": "gru",
        "name": "x",
        "flag": False,
    }


def test_override_parses_by_annotation():
    cfg = override(
        Config(),
        ["model.hidden=16", "model.lrs=0.1,0.2", "model.season=7", "model.kind=lstm", "flag=true"],
    )
    assert cfg.model == Model(hidden=16, lrs=(0.1, 0.2), season=7, kind="lstm")
    assert cfg.flag is True
    assert override(cfg, ["model.season=none", "model.lrs="]).model.season is None
    assert override(cfg, ["model.lrs="]).model.lrs == ()
    # one enclosing pair of brackets is the list it means (a registered command wrote [buy])
    assert override(cfg, ["model.lrs=[0.1, 0.2]"]).model.lrs == (0.1, 0.2)
    assert override(cfg, ["model.lrs=(0.3)"]).model.lrs == (0.3,)
    assert override(cfg, ["model.lrs=[]"]).model.lrs == ()


def test_every_printed_field_round_trips():
    cfg = override(Config(), ["model.season=3", "flag=true"])
    lines = format_config(cfg).splitlines()
    assignments = [line.replace(" = ", "=", 1) for line in lines]
    assert override(Config(), assignments) == cfg
    assert format_value((1, 2)) == "1,2"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.hiden=3", "unknown config path 'model.hiden' (did you mean model.hidden"),
        ("model.hidden=x", "model.hidden: 'x' is not an int"),
        ("model.lrs=0.1,a", "model.lrs: 'a' is not a float"),
        ("model.lrs=[0.1,[0.2]]", "model.lrs: '[0.1,[0.2]]' is not a comma-separated list"),
        ("model.lrs='0.1'", "brackets or quotes inside an item"),
        ("model.kind=rnn", "model.kind: 'rnn' is not one of ['gru', 'lstm']"),
        ("flag=maybe", "flag: 'maybe' is not true or false"),
        ("model", "write PATH=VALUE"),
        ("model=3", "unknown config path 'model'"),
    ],
)
def test_bad_overrides_are_one_line_errors(assignment, message):
    with pytest.raises(ConfigError, match=None) as info:
        override(Config(), [assignment])
    assert message in str(info.value)
    assert "\n" not in str(info.value)
