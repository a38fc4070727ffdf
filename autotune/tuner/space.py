"""Search spaces: a YAML file of dimensions, objectives, constraints and a base TrialConfig.

A dimension is named by its dotted TrialConfig path (`memory.zero_stage`) and declared as

* a list — categorical choices: `memory.zero_stage: [0, 1, 2]`;
* a mapping — `{choices: [...]}`, or a range `{low, high[, log][, step][, type: int|float]}`;
* a scalar — a fixed value.

A tuple field is searched one member at a time, as a boolean dimension named `<field>.<member>`:
`memory.empty_cache_after.generation: [false, true]` puts or leaves "generation" in the tuple, and
`optimizer.partition.layers.3: [false, true]` makes block 3 state-full (an explicit layer mask).
Keeping each member its own dimension lets a sampler learn which sites matter, which it could not
from one categorical over all subsets.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from autotune import schema
from autotune.config import MAX_MEMORY_GB, TrialConfig, flatten
from autotune.errors import ConfigError
from autotune.tuner.metrics import METRICS

if TYPE_CHECKING:   # optuna loads lazily, for `autotune --help`
    import optuna

log = logging.getLogger(__name__)

Kind = Literal["categorical", "int", "float", "fixed"]
Direction = Literal["minimize", "maximize"]
_CONSTRAINT = re.compile(r"^\s*([\w.]+)\s*<=\s*(\S+)\s*$")
_TOP_KEYS = ("base", "budget_gb", "dimensions", "objectives", "constraints")
# Metrics every trial that ran measures above zero: a constraint `<= 0` (or below) on them holds for no trial.
_POSITIVE_METRICS = ("_gb", "step_time_s", "wall_time_s")


@dataclass(frozen=True, kw_only=True)
class Dimension:
    """One searched (or fixed) TrialConfig path."""

    name: str
    kind: Kind
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None          # the fixed value, for kind "fixed"

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"


@dataclass(frozen=True, kw_only=True)
class Objective:
    metric: str
    direction: Direction


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """`metric <= bound`; a bound of None means the search's memory budget."""

    metric: str
    bound: float | None

    def limit(self, budget_gb: float | None) -> float:
        if self.bound is not None:
            return self.bound
        if budget_gb is None:
            raise ConfigError(f"constraint '{self.metric} <= budget' needs a budget: pass --budget-gb or set budget_gb")
        return budget_gb


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A loaded, validated search space. `base` already carries the fixed dimensions."""

    source: str
    base: TrialConfig
    dimensions: tuple[Dimension, ...]
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    budget_gb: float | None = None

    @property
    def searched(self) -> tuple[Dimension, ...]:
        return tuple(d for d in self.dimensions if d.searched)

    @property
    def directions(self) -> list[Direction]:
        return [o.direction for o in self.objectives]

    def rebase(self, overrides: dict[str, object]) -> SearchSpace:
        """The same space over a base with dotted-path overrides (e.g. the CLI's --model)."""
        return dataclasses.replace(self, base=self.base.replace(**overrides))


# -- loading -------------------------------------------------------------------------------------
def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file.

    Raises:
        ConfigError: naming the file, and for each problem the key and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such search space file: {path}")
    data = schema.load_yaml_text(path, what="search space") or {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", source=str(path))
    return parse_space(data, source=str(path))


def parse_space(data: dict, *, source: str = "<space>") -> SearchSpace:
    """Build a SearchSpace from plain data, collecting every problem into one ConfigError."""
    problems = [f"{schema.show(k)}: unknown key (valid keys: {', '.join(_TOP_KEYS)})"
                for k in data if k not in _TOP_KEYS]
    base = _parse_base(data.get("base") or {}, problems)
    # a broken base still lets every dimension be checked (against the defaults), all in one pass
    dims = _parse_dimensions(data.get("dimensions") or {}, base or TrialConfig(), problems)
    objectives = _parse_objectives(data.get("objectives"), problems)
    constraints = _parse_constraints(data.get("constraints") or [], problems)
    budget = data.get("budget_gb")
    if budget is not None and not _positive_number(budget):
        problems.append(f"budget_gb: must be a positive, finite number, got {schema.show(budget)}")
    elif budget is not None and budget > MAX_MEMORY_GB:
        problems.append(f"budget_gb: must be at most {MAX_MEMORY_GB:g} GiB, got {schema.show(budget)}")
    if problems:
        raise ConfigError(problems, source=source)
    fixed = {d.name: d.value for d in dims if not d.searched}
    space = SearchSpace(source=source, base=base, dimensions=dims, objectives=objectives,
                        constraints=constraints, budget_gb=None if budget is None else float(budget))
    try:
        return dataclasses.replace(space, base=apply_params(space, fixed))
    except ConfigError as exc:
        raise ConfigError([f"dimensions (fixed values): {p}" for p in exc.problems], source=source) from None


def _parse_base(raw: object, problems: list[str]) -> TrialConfig | None:
    if not isinstance(raw, dict):
        problems.append(f"base: expected a mapping (a partial TrialConfig), got {schema.show(raw)}")
        return None
    try:
        return TrialConfig.from_dict(raw)
    except ConfigError as exc:
        problems.extend(f"base.{p}" for p in exc.problems)
        return None


def _parse_dimensions(raw: object, base: TrialConfig, problems: list[str]) -> tuple[Dimension, ...]:
    if not isinstance(raw, dict):
        problems.append(f"dimensions: expected a mapping of dotted TrialConfig paths, got {schema.show(raw)}")
        return ()
    if not raw:
        problems.append("dimensions: nothing to search; list at least one TrialConfig path with choices or a range")
        return ()
    paths = set(flatten(base))
    dims = []
    before = len(problems)
    for name, spec in raw.items():
        where = f"dimensions.{name}"
        name = str(name)
        if name not in paths and _member_of(name) is None:
            problems.append(f"{where}: unknown dimension (not a TrialConfig path such as memory.zero_stage)")
            continue
        dim = _parse_dimension(name, spec, where, problems)
        if dim is not None and _check_values(dim, base, where, problems):
            dims.append(dim)
    if len(problems) == before and not any(d.searched for d in dims):
        problems.append("dimensions: every dimension is fixed, so there is nothing to search; "
                        "give at least one a list of choices or a range")
    return tuple(dims)


def _parse_dimension(name: str, spec: object, where: str, problems: list[str]) -> Dimension | None:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        return Dimension(name=name, kind="fixed", value=spec)
    unknown = set(spec) - {"choices", "low", "high", "log", "step", "type"}
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)} (use choices, or low/high/log/step/type)")
        return None
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: must be a non-empty list, got {schema.show(choices)}")
            return None
        if any(isinstance(c, (list, dict)) for c in choices):
            problems.append(f"{where}.choices: choices must be scalars (search a tuple one member at a time)")
            return None
        if any(isinstance(c, float) and not math.isfinite(c) for c in choices):
            problems.append(f"{where}.choices: every choice must be finite, got {schema.show(choices)}")
            return None
        return Dimension(name=name, kind="categorical", choices=tuple(choices))
    return _parse_range(name, spec, where, problems)


def _parse_range(name: str, spec: dict, where: str, problems: list[str]) -> Dimension | None:
    low, high = spec.get("low"), spec.get("high")
    if not all(_finite_number(v) for v in (low, high)):
        problems.append(f"{where}: a range needs finite numeric low and high, "
                        f"got low={schema.show(low)} high={schema.show(high)}")
        return None
    kind = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    log_scale, step = spec.get("log", False), spec.get("step")
    problem = _range_problem(kind, low, high, log_scale, step)
    if problem is not None:
        problems.append(f"{where}{problem}")
        return None
    return Dimension(name=name, kind=kind, low=low, high=high, log=log_scale, step=step)


def _range_problem(kind: object, low: float, high: float, log_scale: object, step: object) -> str | None:
    """Why a range cannot be sampled (Optuna would crash on it mid-study), or None."""
    if kind not in ("int", "float"):
        return f".type: must be int or float, got {schema.show(kind)}"
    if not isinstance(log_scale, bool):
        return f".log: must be true or false, got {schema.show(log_scale)}"
    if low >= high:
        return f": low ({low}) must be below high ({high})"
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        return f": an int range needs integer low and high, got low={low} high={high}"
    if log_scale and low <= 0:
        return f": a log range needs low > 0, got {low}"
    if log_scale and step is not None:
        return ": log and step cannot be combined"
    if step is not None and not (_positive_number(step) and (kind == "float" or isinstance(step, int))):
        return f".step: must be a positive {'integer' if kind == 'int' else 'number'}, got {schema.show(step)}"
    return None


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: object) -> bool:
    return _finite_number(value) and value > 0  # type: ignore[operator]


def _check_values(dim: Dimension, base: TrialConfig, where: str, problems: list[str]) -> bool:
    """Try every choice (or both range ends) in its own record, so a bad value fails at load time.

    Only the owning record (e.g. AllocatorConfig) checks the value: a cross-field rule such as
    "offload needs ZeRO >= 1" depends on other dimensions, and is met or not per sampled config.
    """
    values = {"fixed": [dim.value], "categorical": list(dim.choices)}.get(dim.kind, [dim.low, dim.high])
    if _member_of(dim.name) is not None:
        bad = [v for v in values if not isinstance(v, bool)]
        for value in bad:
            problems.append(f"{where}: a tuple-member dimension takes true/false, got {schema.show(value)}")
        return not bad
    *parents, leaf = dim.name.split(".")
    owner: Any = base
    for key in parents:
        owner = getattr(owner, key)
    ok = True
    for value in values:
        data = {**schema.to_dict(owner), leaf: value}
        try:
            schema.from_dict(type(owner), data)
        except ConfigError as exc:
            problems.extend(f"{where}: value {schema.show(value)} is invalid: {p}" for p in exc.problems)
            ok = False
    return ok


def _parse_objectives(raw: object, problems: list[str]) -> tuple[Objective, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("objectives: must be a non-empty list of {metric, direction}")
        return ()
    out: list[Objective] = []
    for i, item in enumerate(raw):
        where = f"objectives[{i}]"
        if not isinstance(item, dict) or set(item) != {"metric", "direction"}:
            problems.append(f"{where}: expected {{metric: NAME, direction: minimize|maximize}}, "
                            f"got {schema.show(item)}")
        elif not isinstance(item["metric"], str) or item["metric"] not in METRICS:
            problems.append(f"{where}.metric: unknown metric {schema.show(item['metric'])} "
                            f"(known: {', '.join(METRICS)})")
        elif item["direction"] not in ("minimize", "maximize"):
            problems.append(f"{where}.direction: must be minimize or maximize, got {schema.show(item['direction'])}")
        elif any(o.metric == item["metric"] for o in out):
            # Optuna would get the same value twice, and the scorer would mark every trial failed
            problems.append(f"{where}.metric: {item['metric']!r} is already an objective; list each metric once")
        else:
            out.append(Objective(metric=item["metric"], direction=item["direction"]))
    return tuple(out)


def _parse_constraints(raw: object, problems: list[str]) -> tuple[Constraint, ...]:
    if not isinstance(raw, list):
        problems.append(f"constraints: expected a list of 'metric <= bound' strings, got {schema.show(raw)}")
        return ()
    out = []
    for i, item in enumerate(raw):
        where = f"constraints[{i}]"
        match = _CONSTRAINT.match(item) if isinstance(item, str) else None
        if match is None:
            problems.append(f"{where}: expected 'metric <= NUMBER' or 'metric <= budget', got {schema.show(item)}")
            continue
        metric, bound = match.groups()
        if metric not in METRICS:
            problems.append(f"{where}: unknown metric {schema.show(metric)} (known: {', '.join(METRICS)})")
        elif bound == "budget":
            out.append(Constraint(metric=metric, bound=None))
        else:
            problem = _bound_problem(metric, bound)
            if problem is None:
                out.append(Constraint(metric=metric, bound=float(bound)))
            else:
                problems.append(f"{where}: {problem}")
    return tuple(out)


def _bound_problem(metric: str, bound: str) -> str | None:
    """Why `metric <= bound` is not a usable constraint (not a number, or met by no trial), or None."""
    try:
        value = float(bound)
    except ValueError:
        return f"bound must be a number or 'budget', got {schema.show(bound)}"
    if not math.isfinite(value):
        return f"bound must be a finite number, got {bound}"
    if metric.endswith(_POSITIVE_METRICS) and value <= 0:
        return f"no trial can meet {metric} <= {bound}: {metric} is always positive; raise the bound"
    if metric != "reward_gain" and value < 0:
        return f"no trial can meet {metric} <= {bound}: {metric} is never negative; raise the bound"
    return None


# -- tuple members -------------------------------------------------------------------------------
def _field_types(cls: type = TrialConfig, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out.update(_field_types(hint, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = hint
    return out


_FIELD_TYPES = _field_types()


def _tuple_item_type(hint: Any) -> Any | None:
    """The item type of a `tuple[X, ...]` (optionally `| None`) field, else None."""
    for tp in (hint, *get_args(hint)):
        if get_origin(tp) is tuple:
            return get_args(tp)[0]
    return None


def _member_of(name: str) -> tuple[str, Any] | None:
    """For `<tuple field>.<member>`, the field path and the parsed member; else None."""
    parent, _, member = name.rpartition(".")
    item = _tuple_item_type(_FIELD_TYPES.get(parent))
    if item is None:
        return None
    if get_origin(item) is Literal:
        return (parent, member) if member in get_args(item) else None
    if item is int and member.isdigit():
        return parent, int(member)
    return None


def _member_order(parent: str, members: set) -> tuple:
    item = _tuple_item_type(_FIELD_TYPES[parent])
    if get_origin(item) is Literal:
        return tuple(m for m in get_args(item) if m in members)
    return tuple(sorted(members))


# -- params <-> config ---------------------------------------------------------------------------
def _apply(base: TrialConfig, params: dict[str, object]) -> TrialConfig:
    flat = flatten(base)
    overrides: dict[str, object] = {}
    members: dict[str, set] = {}
    for name, value in params.items():
        owner = _member_of(name) if name not in flat else None
        if owner is None:
            overrides[name] = value
            continue
        parent, member = owner
        current = members.setdefault(parent, set(flat.get(parent) or ()))
        (current.add if value else current.discard)(member)
    for parent, current in members.items():
        overrides[parent] = _member_order(parent, current)
    return base.replace(**overrides) if overrides else base


def apply_params(space: SearchSpace, params: dict[str, object], *, check: bool = True) -> TrialConfig:
    """The TrialConfig for a set of dimension values (a subset is fine: the rest stay at base).

    Args:
        check: False builds the config even when a cross-field rule fails (to record an invalid
            sampled combination as what it was); types are still checked.

    Raises:
        ConfigError: when a value is invalid for its path.
    """
    if check:
        return _apply(space.base, params)
    with schema.unchecked():
        return _apply(space.base, params)


def distributions(space: SearchSpace) -> dict[str, Any]:
    """The Optuna distribution `suggest` asks for, per searched dimension."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for dim in space.searched:
        if dim.kind == "categorical":
            out[dim.name] = CategoricalDistribution(list(dim.choices))
        elif dim.kind == "int":
            out[dim.name] = IntDistribution(int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            out[dim.name] = FloatDistribution(dim.low, dim.high, step=dim.step, log=dim.log)
    return out


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, object]:
    """Ask an Optuna trial for every searched dimension; returns {dimension: value}."""
    params: dict[str, object] = {}
    for dim in space.searched:
        if dim.kind == "categorical":
            params[dim.name] = trial.suggest_categorical(dim.name, list(dim.choices))
        elif dim.kind == "int":
            params[dim.name] = trial.suggest_int(dim.name, int(dim.low), int(dim.high), step=int(dim.step or 1),
                                                 log=dim.log)
        else:
            params[dim.name] = trial.suggest_float(dim.name, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def params_for(space: SearchSpace, config: TrialConfig) -> dict[str, object]:
    """The searched dimensions' values that describe `config`, for `study.enqueue_trial`.

    A value outside a dimension is left out (the sampler then picks it, while the trial still
    runs `config`, which the controller stores alongside), so an advisor proposal is never lost
    just because the space is narrower than the advice.
    """
    flat = flatten(config)
    params: dict[str, object] = {}
    for dim in space.searched:
        owner = _member_of(dim.name) if dim.name not in flat else None
        value = (owner[1] in (flat.get(owner[0]) or ())) if owner else flat.get(dim.name)
        if _contains(dim, value):
            params[dim.name] = value
        else:
            log.debug("%s=%r lies outside the space; the sampler will not see it", dim.name, value)
    return params


def _contains(dim: Dimension, value: object) -> bool:
    if dim.kind == "categorical":
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in dim.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if dim.kind == "int" and not isinstance(value, int):
        return False
    return dim.low <= value <= dim.high
