"""Search-space files: the shipped ones load, bad ones are rejected with file, key and reason."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.tuner.space import apply_params, load_space, params_for, suggest
from tests.tuner.tuner_helpers import REPO


@pytest.mark.parametrize("name", ["default", "frugal", "interventions", "ci-tiny"])
def test_shipped_spaces_load(name: str) -> None:
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert space.searched and space.objectives
    for dim in space.searched:   # every dimension's first choice or low end builds a valid config
        value = dim.choices[0] if dim.choices else dim.low
        assert isinstance(apply_params(space, {dim.name: value}), TrialConfig)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


OBJ = "objectives: [{metric: reward, direction: maximize}]\n"


@pytest.mark.parametrize("body, key, reason", [
    ("dimensions: {memory.zero_stag: [0, 1]}\n" + OBJ, "dimensions.memory.zero_stag", "unknown dimension"),
    ("dimensions: {optimizer.partition.density: {low: 0.8, high: 0.2}}\n" + OBJ,
     "dimensions.optimizer.partition.density", "must be below high"),
    ("dimensions: {optimizer.partition.density: {low: 0.0, high: 2.0}}\n" + OBJ,
     "dimensions.optimizer.partition.density", "must be in [0, 1]"),
    ("dimensions: {workload.actor_lr: {low: 0, high: 1, log: true, type: float}}\n" + OBJ,
     "dimensions.workload.actor_lr", "log range needs low > 0"),
    ("dimensions: {workload.steps: {low: 1, high: 4, type: integer}}\n" + OBJ, "dimensions.workload.steps.type",
     "must be int or float"),
    ("dimensions: {memory.zero_stage: [0, 5]}\n" + OBJ, "dimensions.memory.zero_stage", "must be 0, 1, 2 or 3"),
    ("dimensions: {memory.empty_cache_after.lunch: [false, true]}\n" + OBJ,
     "dimensions.memory.empty_cache_after.lunch", "unknown dimension"),
    ("dimensions: {}\nobjectives: [{metric: happiness, direction: maximize}]\n", "objectives[0].metric",
     "unknown metric"),
    ("dimensions: {}\n" + OBJ + "constraints: ['peak_reserved_gb <= lots']\n", "constraints[0]", "number or 'budget'"),
])
def test_bad_space_names_file_key_and_reason(tmp_path: Path, body: str, key: str, reason: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message and key in message and reason in message


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "dimensions: {nope: [1], memory.zero_stage: [7]}\nobjectives: []\nextra: 1\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert len(info.value.problems) == 4


def test_tuple_members_become_one_boolean_each(tmp_path: Path) -> None:
    path = _write(tmp_path, "dimensions:\n"
                  "  memory.empty_cache_after.actor_train: [false, true]\n"
                  "  memory.empty_cache_after.generation: [false, true]\n"
                  "  optimizer.partition.layers.2: [false, true]\n"
                  "  optimizer.partition.layers.0: [false, true]\n" + OBJ)
    space = load_space(path)
    cfg = apply_params(space,
                       {"memory.empty_cache_after.actor_train": True, "memory.empty_cache_after.generation": True,
                               "optimizer.partition.layers.2": True, "optimizer.partition.layers.0": True})
    # members come out in the field's own order (PHASES; ascending layer indices)
    assert cfg.memory.empty_cache_after == ("generation", "actor_train")
    assert cfg.optimizer.partition.layers == (0, 2)
    assert params_for(space, cfg) == {"memory.empty_cache_after.actor_train": True,
                                      "memory.empty_cache_after.generation": True,
                                      "optimizer.partition.layers.2": True, "optimizer.partition.layers.0": True}


def test_fixed_values_go_into_the_base(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path,
                              "dimensions: {memory.zero_stage: 2, memory.static_kv_cache: [false, true]}\n" + OBJ))
    assert space.base.memory.zero_stage == 2
    assert [d.name for d in space.searched] == ["memory.static_kv_cache"]


def test_suggest_follows_fixed_trial_and_params_round_trip(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, "dimensions:\n  optimizer.partition.density: {low: 0.0, high: 1.0}\n"
                              "  optimizer.partition.update_gap: {low: 10, high: 1000, log: true}\n"
                              "  memory.empty_cache_after.generation: [false, true]\n" + OBJ))
    params = {"optimizer.partition.density": 0.3, "optimizer.partition.update_gap": 50,
              "memory.empty_cache_after.generation": True}
    assert suggest(optuna.trial.FixedTrial(params), space) == params
    cfg = apply_params(space, params)
    assert (cfg.optimizer.partition.density, cfg.optimizer.partition.update_gap) == (0.3, 50)
    assert params_for(space, cfg) == params
    # a value outside the space is left to the sampler rather than enqueued out of range
    assert "optimizer.partition.update_gap" not in params_for(space,
                                                              cfg.replace(**{"optimizer.partition.update_gap": 5}))


OBJ2 = "objectives: [{metric: reward, direction: maximize}, {metric: peak_reserved_gb, direction: minimize}]\n"
DIM = "dimensions: {memory.static_kv_cache: [false, true]}\n"


@pytest.mark.parametrize(("body", "key", "reason"), [
    # a duplicated objective made every trial FAIL silently
    (DIM + "objectives: [{metric: reward, direction: maximize}, {metric: reward, direction: maximize}]\n",
     "objectives[1].metric", "already an objective"),
    # step 0 crashed inside Optuna at the first ask()
    ("dimensions: {workload.steps: {low: 1, high: 8, step: 0}}\n" + OBJ, "dimensions.workload.steps.step",
     "positive integer"),
    ("dimensions: {optimizer.partition.density: {low: 0.1, high: 0.9, step: -0.1}}\n" + OBJ,
     "dimensions.optimizer.partition.density.step", "positive number"),
    ("dimensions: {optimizer.partition.density: {low: .nan, high: 0.9}}\n" + OBJ,
     "dimensions.optimizer.partition.density", "finite numeric low and high"),
    ("dimensions: {optimizer.partition.density: {low: 0.1, high: .inf}}\n" + OBJ,
     "dimensions.optimizer.partition.density", "finite numeric low and high"),
    ("dimensions: {workload.actor_lr: [0.001, .nan]}\n" + OBJ, "dimensions.workload.actor_lr", "finite"),
    (DIM + OBJ + "budget_gb: .nan\n", "budget_gb", "finite"),
    (DIM + OBJ + "budget_gb: .inf\n", "budget_gb", "finite"),
    (DIM + OBJ + "constraints: ['peak_reserved_gb <= nan']\n", "constraints[0]", "finite"),
    (DIM + OBJ + "constraints: ['peak_reserved_gb <= inf']\n", "constraints[0]", "finite"),
    (DIM + OBJ + "constraints: ['peak_reserved_gb <= 0']\n", "constraints[0]", "no trial can meet"),
    (DIM + OBJ + "constraints: ['fragmentation <= -0.1']\n", "constraints[0]", "no trial can meet"),
    ("dimensions: []\n" + OBJ, "dimensions", "nothing to search"),
    ("dimensions: {}\n" + OBJ, "dimensions", "nothing to search"),
    (OBJ, "dimensions", "nothing to search"),
    ("dimensions: {memory.zero_stage: 2}\n" + OBJ, "dimensions", "every dimension is fixed"),
])
def test_spaces_that_would_fail_mid_study_are_rejected_at_load(tmp_path: Path, body: str, key: str,
                                                               reason: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert key in str(info.value) and reason in str(info.value)


def test_a_broken_base_still_checks_the_dimensions(tmp_path: Path) -> None:
    path = _write(tmp_path, "base: {device: tpu}\ndimensions: {memory.zero_stage: [0, 9]}\n" + OBJ)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert any(p.startswith("base.device") for p in info.value.problems)
    assert any(p.startswith("dimensions.memory.zero_stage") for p in info.value.problems)


def test_a_binary_space_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_space(path)
