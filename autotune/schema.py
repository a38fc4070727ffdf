"""Frozen dataclasses <-> plain dicts (YAML/JSON), checked against their type hints.

Every record that crosses a boundary (TrialConfig, MemoryReport, TrialResult, ...) is a frozen,
keyword-only dataclass. `from_dict` collects *every* problem with its key path before raising one
`ConfigError`, so a user fixes a file in one pass instead of one error at a time.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from autotune.errors import ConfigError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts, lists and scalars (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any, *, source: str | None = None) -> T:
    """Build `cls` from plain data, checking keys, types and each record's `problems()`.

    Raises:
        ConfigError: listing every unknown key, missing key, wrong type and invalid value, each
            with its dotted key path.
    """
    problems: list[str] = []
    obj = _convert(cls, data, "", problems)
    if problems:
        raise ConfigError(problems, source=source)
    return obj


def validate(obj: Any) -> list[str]:
    """Every value problem in a dataclass tree, as 'key.path: message' strings."""
    problems: list[str] = []
    _collect_problems(obj, "", problems)
    return problems


def _collect_problems(obj: Any, path: str, problems: list[str]) -> None:
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return
    for f in dataclasses.fields(obj):
        _collect_problems(getattr(obj, f.name), _join(path, f.name), problems)
    problems.extend(_own_problems(obj, path))


def dump_yaml(obj: Any, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
    if path is not None:
        Path(path).write_text(text)
    return text


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from None
    return from_dict(cls, data if data is not None else {}, source=str(path))


def dump_json(obj: Any, path: str | Path | None = None) -> str:
    text = json.dumps(to_dict(obj), indent=2)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text


def load_json(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read JSON: {exc}", source=str(path)) from None
    return from_dict(cls, data, source=str(path))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    where = path or "(root)"
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            problems.append(f"{where}: must not be null")
            return None
        non_null = [a for a in args if a is not type(None)]
        for arg in non_null:  # first member that converts cleanly wins
            trial: list[str] = []
            out = _convert(arg, value, path, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in non_null)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{where}: must be one of {', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return ()
        item_tp = get_args(tp)[0]
        return tuple(_convert(item_tp, v, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return {}
        val_tp = get_args(tp)[1]
        return {str(k): _convert(val_tp, v, _join(path, str(k)), problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"schema: unsupported field type {tp!r} at {where}")


def _convert_dataclass(cls: Any, value: Any, path: str, problems: list[str]) -> Any:
    where = path or "(root)"
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping, got {value!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in fields:
            problems.append(f"{_join(path, str(key))}: unknown key (valid keys: {', '.join(fields)})")
    before = len(problems)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(path, name), problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{_join(path, name)}: missing required key")
    if len(problems) > before:
        return None
    obj = cls(**kwargs)
    problems.extend(_own_problems(obj, path))
    return obj


def _own_problems(obj: Any, path: str) -> list[str]:
    """A record's value checks: its `problems()` yields (key, message) pairs."""
    check = getattr(obj, "problems", None)
    return [f"{_join(path, key)} {msg}" for key, msg in check()] if callable(check) else []
