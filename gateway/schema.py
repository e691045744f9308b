"""Typed TOML sections: dataclasses in, one clear line per problem out.

A section is a frozen dataclass whose fields carry their defaults and,
optionally, a validator in ``field(metadata={"check": fn})``; ``fn`` returns
an error text or None. :func:`load_section` turns a TOML table into an
instance and collects errors as ``file: section.key: problem`` lines instead
of raising on the first one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")
Validator = Callable[[Any], str | None]


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds one human-readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def setting(default: Any, check: Validator | None = None, doc: str = "") -> Any:
    """A section field with a default, an optional validator and a doc line."""
    metadata = {"check": check, "doc": doc}
    if isinstance(default, list | dict):
        factory = default.copy
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def load_section(cls: type[T], table: Any, where: str, errors: list[str]) -> T:
    """Build ``cls`` from ``table``; append problems to ``errors``.

    Fields with problems keep their defaults so that every problem in a file
    is reported in one go.
    """
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table, got {_kind(table)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in fields:
            errors.append(f"{where}.{key}: unknown key{_suggest(key, fields)}")
            continue
        problem, value = _coerce(hints[key], raw, f"{where}.{key}")
        if problem is None:
            check = fields[key].metadata.get("check")
            problem = check(value) if check else None
        if problem is not None:
            errors.append(f"{where}.{key}: {problem}")
            continue
        values[key] = value
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> tuple[str | None, Any]:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None, None
        for option in options:
            problem, coerced = _coerce(option, value, where)
            if problem is None:
                return None, coerced
        return f"expected {_describe(hint)}, got {_kind(value)}", None
    if origin is Literal:
        allowed = get_args(hint)
        if value in allowed:
            return None, value
        return f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}", None
    if origin in (list, tuple):
        (item_hint, *_rest) = get_args(hint) or (Any,)
        if not isinstance(value, list):
            return f"expected a list, got {_kind(value)}", None
        items = []
        for index, item in enumerate(value):
            problem, coerced = _coerce(item_hint, item, f"{where}[{index}]")
            if problem is not None:
                return f"item {index}: {problem}", None
            items.append(coerced)
        return None, tuple(items) if origin is tuple else items
    if origin is dict:
        _key_hint, value_hint = get_args(hint)
        if not isinstance(value, Mapping):
            return f"expected a table, got {_kind(value)}", None
        result = {}
        for k, v in value.items():
            problem, coerced = _coerce(value_hint, v, f"{where}.{k}")
            if problem is not None:
                return f"{k}: {problem}", None
            result[k] = coerced
        return None, result
    if hint is Any:
        return None, value
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return None, float(value)
        return f"expected a number, got {_kind(value)}", None
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return None, value
        return f"expected a whole number, got {_kind(value)}", None
    if hint is bool:
        if isinstance(value, bool):
            return None, value
        return f"expected true or false, got {_kind(value)}", None
    if hint is str:
        if isinstance(value, str):
            return None, value
        return f"expected a string, got {_kind(value)}", None
    raise TypeError(f"schema: unsupported type {hint!r} at {where}")


def _describe(hint: Any) -> str:
    names: list[str] = []
    for option in get_args(hint):
        if option is type(None):
            continue
        if get_origin(option) is Literal:
            names.extend(repr(value) for value in get_args(option))
        elif option is bool:
            names.append("true or false")
        else:
            names.append(getattr(option, "__name__", str(option)))
    return " or ".join(names)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(sorted(known))})"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def suggest_key(key: str, known: Mapping[str, Any]) -> str:
    """' (did you mean ...?)' for a misspelt key, for callers outside this module."""
    return _suggest(key, known)
