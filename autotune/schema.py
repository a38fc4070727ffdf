"""Frozen dataclasses <-> plain dicts (YAML/JSON), checked against their type hints.

Every record that crosses a boundary (TrialConfig, MemoryReport, TrialResult, ...) is a frozen,
keyword-only dataclass. `from_dict` collects *every* problem with its key path before raising one
`ConfigError`, so a user fixes a file in one pass instead of one error at a time.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from autotune import files
from autotune.errors import ConfigError

T = TypeVar("T")
_CHECK_VALUES = contextvars.ContextVar("autotune_schema_check_values", default=True)

MAX_FILE_BYTES = 10 << 20          # a config, space or result file is a few KiB; refuse to parse a huge one
MAX_YAML_ALIASES = 100             # anchors and aliases are rare in configs: no "billion laughs" expansion
MAX_YAML_NODES = 100_000           # nodes after alias expansion
_SHOW_CHARS = 80                   # longest value quoted in an error message


def show(value: Any) -> str:
    """`repr(value)` cut to a readable length, so an error message stays one short line."""
    text = repr(value)
    if len(text) <= _SHOW_CHARS:
        return text
    return f"{text[:_SHOW_CHARS]}... ({len(text)} characters)"


def read_text(path: str | Path, *, what: str = "file") -> str:
    """A UTF-8 text file's contents.

    Raises:
        ConfigError: the file is missing, unreadable, over MAX_FILE_BYTES or not UTF-8 text.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{what} is {path.stat().st_size} bytes, over the {MAX_FILE_BYTES >> 20} MiB limit",
                              source=str(path))
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", source=str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                          "save it as UTF-8", source=str(path)) from None


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs: too many aliases, or too many nodes once expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """Refuse a key given twice in one mapping: YAML keeps the last one silently, so the first
        (e.g. one `optimizer.name` of two in a space) would be ignored. Merge keys (<<) still override."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(   # no mark: the error stays one line
                    None, None, f"duplicate key {key!r} on lines {seen[key] + 1} and {key_node.start_mark.line + 1}; "
                    "keep one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under `node` with every alias expanded; raises past MAX_YAML_NODES or on a cycle."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise yaml.YAMLError("a recursive alias (a node that contains itself)")
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value)
    open_nodes.discard(key)
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES} values (nested aliases?)")
    sizes[key] = size
    return size


def load_yaml_text(path: str | Path, *, what: str = "file") -> Any:
    """Parse a YAML file safely: UTF-8 only, size-capped, no alias bombs, no Python tags.

    Raises:
        ConfigError: naming the file and what is wrong with it.
    """
    text = read_text(path, what=what)
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {_cap(str(exc))}", source=str(path)) from None


def _cap(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


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


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Within: `from_dict` checks keys and types but skips each record's `problems()`.

    For reading back a record known to be invalid (a sampled combination that could not run),
    so that it is reported with its own values rather than replaced.
    """
    token = _CHECK_VALUES.set(False)
    try:
        yield
    finally:
        _CHECK_VALUES.reset(token)


# What a record's `problems()` yields: (field name, message) pairs.
Problems = Iterator[tuple[str, str]]


def non_finite(record: object) -> Problems:
    """Every float field of `record` that is NaN or infinite: a record's range checks would let NaN
    through (every comparison with NaN is false), and an infinite size or rate is never meant."""
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            yield f.name, f"must be a finite number, got {value}"


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
        files.write_text(path, text)
    return text


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    data = load_yaml_text(path)
    return from_dict(cls, data if data is not None else {}, source=str(path))


def dump_json(obj: Any, path: str | Path | None = None) -> str:
    text = json.dumps(to_dict(obj), indent=2)
    if path is not None:
        files.write_text(path, text + "\n")
    return text


def load_json(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"cannot read JSON: {_cap(str(exc))}", source=str(path)) from None
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
        if len(non_null) == 1:   # `X | None`: X's own complaint says more than "expected X"
            problems.extend(trial)
            return None
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in non_null)}, got {show(value)}")
        return None
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{where}: must be one of {', '.join(repr(a) for a in get_args(tp))}, got {show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {show(value)}")
            return ()
        item_tp = get_args(tp)[0]
        return tuple(_convert(item_tp, v, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {show(value)}")
            return {}
        val_tp = get_args(tp)[1]
        return {str(k): _convert(val_tp, v, _join(path, str(k)), problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {show(value)}")
            return value
        try:
            number = float(value)
        except OverflowError:   # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            problems.append(f"{where}: must be a finite number, got {show(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {show(value)}")
        return value
    raise TypeError(f"schema: unsupported field type {tp!r} at {where}")


def _convert_dataclass(cls: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Build one record; a bad field is reported and replaced by its default, so the record's own
    checks still run on the rest and every problem shows in one pass."""
    where = path or "(root)"
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping, got {show(value)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in fields:
            where = _join(path, _cap(str(key), _SHOW_CHARS))
            problems.append(f"{where}: unknown key (valid keys: {', '.join(fields)})")
    kwargs, bad, missing = {}, set(), False
    for name, f in fields.items():
        if name in value:
            before = len(problems)
            converted = _convert(hints[name], value[name], _join(path, name), problems)
            if len(problems) == before:
                kwargs[name] = converted
            elif dataclasses.is_dataclass(hints[name]) and converted is not None:
                kwargs[name] = converted      # a nested record with bad fields, at their defaults
                bad.update(_bad_paths(name, problems[before:], path))
            else:
                bad.add(name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{_join(path, name)}: missing required key")
            missing = True
    if missing:
        return None
    obj = cls(**kwargs)
    if _CHECK_VALUES.get():
        problems.extend(p for p in _own_problems(obj, path) if not _mentions(p, bad, path))
    return obj


def _bad_paths(name: str, found: list[str], path: str) -> set[str]:
    """The failing keys under field `name` (list indices dropped), relative to the record at `path`."""
    prefix = _join(path, "")
    out = set()
    for problem in found:
        key = re.sub(r"\[\d+\]", "", problem.split(":", 1)[0].split(" ", 1)[0])
        out.add(key[len(prefix):] if prefix and key.startswith(prefix) else key)
    return out or {name}


def _mentions(problem: str, bad: set[str], path: str) -> bool:
    """A record check that reads a field which failed conversion (and so holds its default) would mislead."""
    relative = problem[len(_join(path, "")):] if path else problem
    return any(re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", relative) for key in bad)


def _own_problems(obj: Any, path: str) -> list[str]:
    """A record's value checks: its `problems()` yields (key, message) pairs."""
    check = getattr(obj, "problems", None)
    return [f"{_join(path, key)} {msg}" for key, msg in check()] if callable(check) else []
