"""The search's progress figures: the exact 2-D hypervolume and the parent run's metrics."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from autotune.tuner.convergence import hypervolume, hypervolume_share, progress_metrics
from tests.export.study_factory import make_record, tiny_study


def test_hypervolume_matches_optunas_exact_one() -> None:
    from optuna._hypervolume import compute_hypervolume  # an independent implementation (WFG), minimising

    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.uniform(-1, 1), rng.uniform(0, 10)) for _ in range(rng.randint(1, 8))]
        floor, ceiling = rng.uniform(-1, 0), rng.uniform(5, 10)
        inside = [(-r, p) for r, p in points if r > floor and p < ceiling]
        want = float(compute_hypervolume(np.array(inside), np.array([-floor, ceiling]))) if inside else 0.0
        assert hypervolume(points, (floor, ceiling)) == pytest.approx(want, abs=1e-12)


def test_one_trial_shares_the_budget_it_leaves_free() -> None:
    trial = make_record(0, reserved_gib=1.0, allocated_gib=1.0, reward=0.5)
    assert hypervolume_share([trial], budget_gb=4.0) == pytest.approx(0.75)   # the best reward, 3 of 4 GiB free
    lower = make_record(1, reserved_gib=0.5, allocated_gib=0.5, reward=0.25)
    # the lower trial adds the strip (0.5 GiB, half the best reward) beside the first one's rectangle
    assert hypervolume_share([trial, lower], budget_gb=4.0) == pytest.approx(0.75 + 0.5 * 0.5 / 4.0)


def test_without_rewards_the_share_is_the_free_part_of_the_budget() -> None:
    trial = make_record(0, reserved_gib=1.0, allocated_gib=1.0, reward=None)
    assert hypervolume_share([trial], budget_gb=2.0) == pytest.approx(0.5)


def test_progress_metrics_leave_out_figures_no_feasible_trial_has() -> None:
    records = tiny_study()
    infeasible = records[3:]                         # an OOM and a prescreened trial
    assert progress_metrics(infeasible, 8.0) == {"front_size": 0.0, "hypervolume_share": 0.0}
    figures = progress_metrics(records, 8.0)
    assert figures["best_feasible_reward"] == pytest.approx(0.5)
    assert figures["lowest_feasible_peak_gb"] == pytest.approx(1.0)
    assert figures["front_size"] == 1.0              # these records hold the peak only as an objective
    assert 0.0 < figures["hypervolume_share"] < 1.0
    rewarded = [dataclasses.replace(r, objectives={**r.objectives, "reward": r.result.reward}) for r in records[:3]]
    assert progress_metrics(rewarded, 8.0)["front_size"] == 2.0   # with reward too: 0 and 1; 2 is dominated
