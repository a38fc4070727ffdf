"""Hostile config files: NaN and inf, alias bombs, non-UTF-8 bytes, huge values, many problems at once."""
from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest

from autotune import schema
from autotune.config import TrialConfig, WorkloadConfig
from autotune.errors import ConfigError
from autotune.result import TrialResult


def _load(tmp_path: Path, text: str | bytes) -> TrialConfig:
    path = tmp_path / "trial.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return TrialConfig.load(path)


@pytest.mark.parametrize(("text", "key"), [
    ("device_memory_gb: .nan\n", "device_memory_gb"),
    ("device_memory_gb: .inf\n", "device_memory_gb"),
    ("workload: {actor_lr: .nan}\n", "workload.actor_lr"),
    ("workload: {temperature: .inf}\n", "workload.temperature"),
    ("workload: {kl_coef: -.inf}\n", "workload.kl_coef"),
    ("optimizer: {partition: {density: .nan}}\n", "optimizer.partition.density"),
    ("memory: {allocator: {memory_fraction: .nan}}\n", "memory.allocator.memory_fraction"),
    ("device_memory_gb: " + "9" * 400 + "\n", "device_memory_gb"),   # an int no float can hold
])
def test_every_float_must_be_finite(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match="finite") as info:
        _load(tmp_path, text)
    assert key in str(info.value)


def test_records_built_in_code_are_checked_for_nan_too() -> None:
    config = TrialConfig(device_memory_gb=math.nan, workload=WorkloadConfig(temperature=math.inf, kl_coef=math.nan))
    problems = schema.validate(config)
    assert len(problems) == 3 and all("finite" in p for p in problems)


def test_nested_aliases_are_refused_quickly_and_in_little_memory(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "\n".join(levels) + "\nmodel: {actor: *a8}\n"
    assert len(bomb) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="alias|expands") as info:
            _load(tmp_path, bomb)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 50 << 20 and len(str(info.value)) < 1000


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    config = _load(tmp_path, "model: {actor: &m llama-tiny, critic: *m}\n")
    assert config.model.critic == "llama-tiny"


def test_quoted_values_are_capped(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "algorithm: " + "x" * 100_000 + "\n")
    assert len(str(info.value)) < 400 and "100002 characters" in str(info.value)


@pytest.mark.parametrize("data", [b"\xff\xfe\x00b\x00a\x00s\x00e", "device: cpu  # d\xe9j\xe0 vu\n".encode("latin-1")])
def test_non_utf8_files_are_a_clear_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ConfigError, match="not UTF-8 text.*save it as UTF-8"):
        _load(tmp_path, data)


def test_a_non_utf8_result_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(b'{"status": "ok\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        TrialResult.load(path)


def test_every_problem_in_one_pass(tmp_path: Path) -> None:
    # type errors used to hide every range check of the same record and all cross-field checks
    text = ("workload: {steps: many, actor_lr: -1, gamma: 2, batch_size: 0}\n"
            "optimizer: {beta1: 1.5, eps: x, partition: {density: 3, update_gap: 0}}\n"
            "memory: {zero_stage: 0, offload_optimizer: true, empty_cache_after: [lunch]}\n"
            "device_memory_gb: -1\nalgorithm: ppo\n")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    keys = {p.split(":")[0].split(" ")[0] for p in info.value.problems}
    assert keys == {"workload.steps", "workload.actor_lr", "workload.gamma", "workload.batch_size", "optimizer.beta1",
                    "optimizer.eps", "optimizer.partition.density", "optimizer.partition.update_gap",
                    "memory.empty_cache_after[0]", "memory.offload_optimizer", "device_memory_gb"}


def test_a_check_on_a_field_that_failed_is_not_reported_twice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "memory: {zero_stage: two, offload_optimizer: true}\n")
    assert info.value.problems == ["memory.zero_stage: expected an integer, got 'two'"]
