"""How a TrialResult is told to Optuna: objective values, constraints and trial state.

An OOM, a pre-screened config and an invalid one are *completed, infeasible* trials: every sampler
in Optuna 5 ranks infeasible trials by their constraint violation, so it learns to avoid them. A
crash or a timeout says nothing about the config's memory, so it is a FAIL, which samplers skip.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from autotune.result import TrialResult
from autotune.tuner.metrics import metric_value
from autotune.tuner.space import SearchSpace

log = logging.getLogger(__name__)

# One constraint every trial carries, so that an OOM is infeasible even when its partial peak
# happens to sit under the budget (the simulated device stops it at the capacity).
RAN_CONSTRAINT = "did_not_run"
_INFEASIBLE = ("oom", "prescreened")


@dataclass(frozen=True, kw_only=True)
class Score:
    """What the controller tells Optuna for one trial."""

    state: Literal["complete", "fail"]
    values: tuple[float, ...] | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.constraints.values())


def score(result: TrialResult, space: SearchSpace, budget_gb: float | None) -> Score:
    """Objective values and constraints for `result` under `space`.

    Infeasible trials get 0.0 for an objective they did not measure: samplers rank them by
    constraint violation alone, so the stand-in value never competes with a real one.
    """
    if result.status not in ("ok", *_INFEASIBLE):
        return Score(state="fail", note=result.message)
    measured = {o.metric: metric_value(result, o.metric) for o in space.objectives}
    if result.status == "ok" and None in measured.values():
        missing = [m for m, v in measured.items() if v is None]
        return Score(state="fail", note=f"the trial did not measure {', '.join(missing)}")
    constraints = {RAN_CONSTRAINT: 0.0 if result.status == "ok" else 1.0}
    for c in space.constraints:
        value = metric_value(result, c.metric)
        if value is None:
            # a bound that cannot be checked must not pass as met
            constraints[f"{c.metric}_over_limit"] = 1.0
        else:
            constraints[f"{c.metric}_over_limit"] = value - c.limit(budget_gb)
    values = tuple(0.0 if v is None else float(v) for v in measured.values())
    return Score(state="complete", values=values, constraints=constraints)
