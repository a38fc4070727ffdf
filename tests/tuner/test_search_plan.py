"""plan_search: the GPU, CPU, world-size and budget decisions `autotune search` and `run_search` share."""
from __future__ import annotations

import dataclasses

import pytest

from autotune.errors import ConfigError
from autotune.tuner import fidelity
from autotune.tuner.search_plan import plan_search
from autotune.tuner.settings import SearchSettings
from tests.tuner.tuner_helpers import ci_space


def _settings(**kw: object) -> SearchSettings:
    return SearchSettings(study="plan", space=kw.pop("space", ci_space()), **kw)  # type: ignore[arg-type]


def test_a_cuda_space_without_gpus_falls_back_to_the_cpu_with_an_assumed_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidelity, "detect_gpus", lambda: ())
    space = dataclasses.replace(ci_space().rebase({"device": "cuda"}), budget_gb=None)   # no budget anywhere
    plan = plan_search(_settings(space=space))
    assert plan.gpus == () and plan.gpu_groups == ()
    assert plan.space.base.device == "cpu" and plan.budget.assumed
    assert plan.space.base.device_memory_gb == plan.budget.gb == fidelity.DEFAULT_CPU_BUDGET_GB


def test_a_cuda_space_without_listed_gpus_runs_on_every_detected_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidelity, "detect_gpus", lambda: ("0", "1"))
    plan = plan_search(_settings(space=ci_space().rebase({"device": "cuda"}), budget_gb=20.0))
    assert plan.gpus == ("0", "1") and plan.gpu_groups == ("0", "1") and plan.space.base.device == "cuda"
    assert plan.budget.gb == 20.0 and plan.budget.note == "budget 20 GiB (--budget-gb)"


def test_the_budget_line_names_the_space_file_when_the_budget_comes_from_it() -> None:
    space = ci_space()
    plan = plan_search(_settings(space=space))
    assert plan.budget.gb == space.budget_gb and plan.budget.note.endswith(f"(budget_gb in {space.source})")
    assert plan.space.base.device_memory_gb == space.budget_gb   # the simulated device is the budget


def test_ranks_per_trial_come_from_the_gpu_groups_or_the_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidelity, "detect_gpus", lambda: ("0", "1", "2", "3"))
    grouped = plan_search(_settings(gpus=("0", "1", "2", "3"), gpus_per_trial=2))
    assert grouped.gpu_groups == ("0,1", "2,3") and grouped.space.base.world_size == 2
    assert plan_search(_settings(world_size=3)).space.base.world_size == 3
    with pytest.raises(ConfigError, match="disagrees with --gpus-per-trial"):
        plan_search(_settings(gpus=("0", "1"), gpus_per_trial=2, world_size=4))
    with pytest.raises(ConfigError, match="--gpus-per-trial needs --gpus"):
        plan_search(_settings(gpus_per_trial=2))


def test_listed_gpus_that_cuda_cannot_see_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fidelity, "detect_gpus", lambda: ())
    with pytest.raises(ConfigError, match="CUDA is not available"):
        plan_search(_settings(gpus=("0",)))
