"""The metrics a search space may name as objectives or constraints, read from a TrialResult.

One table, so that a space file, the controller, the recommendation and the progress display all
agree on what `peak_reserved_gb` means. Per-phase metrics are named `<phase>.<metric>`.
"""
from __future__ import annotations

from collections.abc import Callable

from autotune.config import PHASES
from autotune.memory.report import GiB, PhaseMemory
from autotune.result import TrialResult

Getter = Callable[[TrialResult], "float | None"]


def _memory(attr: str) -> Getter:
    return lambda r: None if r.memory is None else float(getattr(r.memory, attr))


def _phase(phase: str, attr: str) -> Getter:
    def get(result: TrialResult) -> float | None:
        found: PhaseMemory | None = None if result.memory is None else result.memory.phase(phase)
        return None if found is None else float(getattr(found, attr))

    return get


def _phase_gb(phase: str, attr: str) -> Getter:
    get_bytes = _phase(phase, attr)
    return lambda r: None if (b := get_bytes(r)) is None else b / GiB


METRICS: dict[str, Getter] = {
    "reward": lambda r: r.reward,
    "reward_gain": lambda r: None if r.reward is None or r.initial_reward is None else r.reward - r.initial_reward,
    "peak_reserved_gb": _memory("peak_reserved_gb"),
    "peak_allocated_gb": _memory("peak_allocated_gb"),
    "fragmentation": _memory("fragmentation"),
    "step_time_s": lambda r: r.step_time_s,
    "wall_time_s": lambda r: r.wall_time_s,
}
for _p in PHASES:
    METRICS[f"{_p}.peak_reserved_gb"] = _phase_gb(_p, "peak_reserved_bytes")
    METRICS[f"{_p}.peak_allocated_gb"] = _phase_gb(_p, "peak_allocated_bytes")
    METRICS[f"{_p}.fragmentation"] = _phase(_p, "fragmentation")


# Metrics where more is better; every other metric is minimised.
MAXIMIZED = frozenset({"reward", "reward_gain"})


def metric_value(result: TrialResult, name: str) -> float | None:
    """The value of metric `name` for `result`, or None where the trial did not measure it.

    Raises:
        KeyError: for a metric not in METRICS (space files are checked against it when loaded).
    """
    return METRICS[name](result)
