"""What defines a study, stored with it, so a resumed or joining search cannot change it silently.

A study's trials are comparable only while the objectives' directions, the searched ranges, the
base config, the memory budget and the reward runs' settings stay as they were: a narrowed range
leaves the sampler's model wrong, a changed base or reward run puts different workloads on one
front, and a changed budget makes the recommendation's budget disagree with its trials. The study
keeps a flat {item: value} of them; any difference is refused, naming each item that changed.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from autotune.attrs import STUDY_ATTR_DEFINITION
from autotune.config import flatten
from autotune.errors import ConfigError

# Where a trial runs, not what it measures: a GPU box and a CPU box may join one study. The CPU's
# simulated device size is the budget, which is an item of its own.
_PLACEMENT = ("device", "device_memory_gb")


def study_definition(*, directions: Mapping[str, str], ranges: Mapping[str, Any], base: Mapping[str, Any],
                     budget_gb: float | None, reward_run: Mapping[str, Any]) -> dict[str, Any]:
    """The items that define a study, as one flat JSON-able dict.

    Args:
        directions: {objective metric: "maximize" | "minimize"}.
        ranges: {searched dimension: its range}, e.g. the Optuna distributions (kept as their text).
        base: the base TrialConfig as a dict; values of searched dimensions are left out (each trial
            sets its own), and so is where trials run (device).
        budget_gb: the memory budget the study's feasibility is judged against.
        reward_run: the reward runs' settings (seeds, steps, proxy model, ...); add keys freely.
    """
    items: dict[str, Any] = {f"direction of {m}": str(d).lower() for m, d in directions.items()}
    items.update({f"range of {name}": str(r) for name, r in ranges.items()})
    items.update({f"base {key}": value for key, value in flatten(dict(base)).items()
                  if key not in ranges and key not in _PLACEMENT})
    items["budget_gb"] = budget_gb
    items.update({f"reward run {key}": value for key, value in reward_run.items()})
    return json.loads(json.dumps(items, default=str))   # what the storage will give back


def check_definition(study: Any, definition: Mapping[str, Any]) -> None:
    """Store `definition` on a study that has none; refuse one that differs from the stored one.

    Raises:
        ConfigError: naming every item that changed, before any trial runs.
    """
    stored = study.user_attrs.get(STUDY_ATTR_DEFINITION) or {}
    changed = [f"{key}: was {_show(stored[key])}, now {_show(definition[key])}"
               for key in sorted(set(stored) & set(definition)) if not _same(stored[key], definition[key])]
    if not changed and not set(definition) <= set(stored):
        # a new study, or an item this version adds to an older one's: this run's value defines it
        study.set_user_attr(STUDY_ATTR_DEFINITION, {**definition, **stored})
    if changed:
        advice = "a study cannot change under its trials: run it as it was started, or use another --study name"
        raise ConfigError([*changed[:-1], f"{changed[-1]}; {advice}"], source=f"study {study.study_name!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def _show(value: Any) -> str:
    return "unset" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
