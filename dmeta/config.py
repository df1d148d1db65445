"""Nested frozen-dataclass configs: every field as a dotted path, typed overrides.

Each paper's config is a frozen dataclass whose fields are sections (frozen dataclasses
such as ``data``, ``model``, ``train``, ``protocol``, ``baselines``) or plain values.
``flatten`` lists every leaf as ``dotted.path -> value``; ``override`` replaces leaves
from ``"dotted.path=value"`` strings, parsing the text by the field's annotation::

    cfg = override(get_config(smoke=True), ["model.hidden=64", "train.lrs=1e-3,3e-3"])

Supported leaf types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``
(``none`` gives None) and ``tuple[X, ...]`` (comma-separated, empty text for ``()``; one
enclosing pair of brackets is read as the list it means: ``[buy]``, ``(1,2)``; quotes or
brackets left inside an item are an error, not part of a string).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

Config = TypeVar("Config")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ConfigError(ValueError):
    """An unknown config path or a value its field cannot take (one line, naming both)."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaves(cfg: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Every leaf field of a nested config: ``dotted.path -> (value, annotation)``, in order."""
    out: dict[str, tuple[Any, Any]] = {}
    hints = _hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        path = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(leaves(value, prefix=f"{path}."))
        else:
            out[path] = (value, hints[field.name])
    return out


def flatten(cfg: Any) -> dict[str, Any]:
    """``dotted.path -> value`` for every leaf of ``cfg``."""
    return {path: value for path, (value, _) in leaves(cfg).items()}


def format_config(cfg: Any) -> str:
    """One line per leaf, ``dotted.path = value``, in a form ``override`` reads back."""
    return "\n".join(f"{path} = {format_value(value)}" for path, value in flatten(cfg).items())


def format_value(value: Any) -> str:
    """The text ``override`` parses back to ``value``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def _optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return functools.reduce(operator.or_, rest), True
    return annotation, False


def parse_value(text: str, annotation: Any, path: str) -> Any:
    """Parses ``text`` as a value of ``annotation`` (see the module docstring).

    Raises:
      ConfigError: naming ``path``, the text and the expected type.
    """
    inner, optional = _optional(annotation)
    stripped = text.strip()
    if optional and stripped.lower() in ("none", "null"):
        return None
    origin = typing.get_origin(inner)
    try:
        if origin is tuple:
            (item, *_) = typing.get_args(inner)
            if stripped[:1] + stripped[-1:] in ("[]", "()"):
                stripped = stripped[1:-1].strip()
            if not stripped:
                return ()
            if any(c in stripped for c in "[]()'\""):
                raise ValueError("a comma-separated list (brackets or quotes inside an item)")
            return tuple(parse_value(part, item, path) for part in stripped.split(","))
        if origin is typing.Literal:
            choices = typing.get_args(inner)
            for choice in choices:
                if stripped == str(choice):
                    return choice
            raise ValueError(f"one of {list(choices)}")
        if inner is bool:
            if stripped.lower() in _TRUE | _FALSE:
                return stripped.lower() in _TRUE
            raise ValueError("true or false")
        if inner is int:
            return int(stripped)
        if inner is float:
            return float(stripped)
        if inner is str:
            return stripped
    except ConfigError:
        raise
    except ValueError as err:
        own = origin in (typing.Literal, tuple) or inner is bool
        expected = str(err) if own else _name(inner)
        raise ConfigError(f"{path}: {text!r} is not {expected}") from None
    raise ConfigError(f"{path}: fields of type {annotation} cannot be set from the command line")


def _name(annotation: Any) -> str:
    return {int: "an int", float: "a float", str: "a string"}.get(
        annotation, f"a {getattr(annotation, '__name__', annotation)}"
    )


def replace_path(cfg: Config, path: str, value: Any) -> Config:
    """``cfg`` with the leaf at ``path`` set to ``value`` (already typed)."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})


def override(cfg: Config, assignments: Iterable[str]) -> Config:
    """Applies ``"dotted.path=value"`` assignments in order.

    Raises:
      ConfigError: a text without ``=``, an unknown path (the nearest known paths are
        named) or a value the field cannot take.
    """
    known = leaves(cfg)
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        path = path.strip()
        if not sep:
            raise ConfigError(f"--set {assignment!r}: write PATH=VALUE")
        if path not in known:
            raise ConfigError(
                f"--set {assignment!r}: unknown config path {path!r}{_near(path, known)}"
            )
        cfg = replace_path(cfg, path, parse_value(text, known[path][1], path))
    return cfg


def _near(path: str, known: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(path, list(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else " (see `dmeta config`)"
