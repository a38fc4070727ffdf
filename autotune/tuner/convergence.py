"""How far a search has come: figures of its feasible front after each finished trial.

`progress_metrics` is what the controller logs on the MLflow parent run, one step per finished
trial, so its chart view shows the search converging. The hypervolume share there is measured in
the (reward up, peak reserved down) plane:

  * reference point (the worst corner): reward `floor` = min(0, the lowest feasible reward), peak =
    the memory budget;
  * ideal point: the best feasible reward so far, at 0 GiB.

The share is the front's hypervolume over the area of that box: 1.0 would be a trial with the best
reward that needs no memory; one trial alone scores (its reward above the floor, as a share of the
best's) x (the share of the budget it leaves free). It can fall when a new trial raises the best
reward (the box grows), which says the front is still moving.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from autotune.result import TrialRecord
from autotune.tuner.recommend import pareto_front


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area of the (reward up, peak down) plane that `points` dominate, bounded by `reference`.

    Exact for two objectives: sweep the points by rising peak, each strip as high as the best reward
    at or below its peak. Points on the wrong side of the reference add nothing.

    Args:
        points: (reward, peak) pairs; dominated ones are harmless.
        reference: (reward floor, peak ceiling), e.g. (0.0, budget_gb).
    """
    floor, ceiling = reference
    inside = sorted((peak, reward) for reward, peak in points if reward > floor and peak < ceiling)
    area, best = 0.0, floor
    for i, (peak, reward) in enumerate(inside):
        best = max(best, reward)
        right = inside[i + 1][0] if i + 1 < len(inside) else ceiling
        area += (right - peak) * (best - floor)
    return area


def progress_metrics(records: Sequence[TrialRecord], budget_gb: float) -> dict[str, float]:
    """The front's figures over `records` (every trial finished so far), for the MLflow parent run.

    `front_size` and `hypervolume_share` are always there (0 before a feasible trial);
    `best_feasible_reward` and `lowest_feasible_peak_gb` once a feasible trial has them, since a
    stand-in value would draw a false point on the chart.
    """
    feasible = [r for r in records if r.feasible and r.result.ok]
    rewards = [r.result.reward for r in feasible if r.result.reward is not None]
    peaks = [r.result.memory.peak_reserved_gb for r in feasible if r.result.memory is not None]
    out = {"front_size": float(len(pareto_front(list(records)))),
           "hypervolume_share": hypervolume_share(feasible, budget_gb)}
    if rewards:
        out["best_feasible_reward"] = max(rewards)
    if peaks:
        out["lowest_feasible_peak_gb"] = min(peaks)
    return out


def hypervolume_share(feasible: Sequence[TrialRecord], budget_gb: float) -> float:
    """The front's hypervolume as a share of the box between the reference and the ideal point
    (see the module docstring). Without rewards (memory-only objectives) the reward axis drops
    out, and the share is the part of the budget the lowest peak leaves free."""
    measured = [(r.result.reward, r.result.memory.peak_reserved_gb) for r in feasible if r.result.memory is not None]
    if not measured or not math.isfinite(budget_gb) or budget_gb <= 0:
        return 0.0
    points = [(reward, peak) for reward, peak in measured if reward is not None]
    if not points:
        lowest = min(peak for _, peak in measured)
        return max(0.0, 1.0 - lowest / budget_gb)
    floor = min(0.0, *(reward for reward, _ in points))
    box = (max(reward for reward, _ in points) - floor) * budget_gb
    return hypervolume(points, (floor, budget_gb)) / box if box > 0 else 0.0
