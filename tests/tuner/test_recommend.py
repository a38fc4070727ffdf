"""Pareto front and recommendation policies, on hand-made records whose answer is worked out here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.config import TrialConfig
from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.memory.report import GiB, MemoryReport, PhaseMemory
from autotune.result import TrialRecord, TrialResult
from autotune.tuner.recommend import pareto_front, recommend, summary, write_outputs


def _rec(number: int, reward: float, peak_gb: float, *, frag: float = 0.1, feasible: bool = True,
         reason: str | None = None) -> TrialRecord:
    reserved = int(peak_gb * GiB)
    allocated = int(reserved * (1 - frag))
    phase = PhaseMemory(name="actor_train", peak_allocated_bytes=allocated, peak_reserved_bytes=reserved,
                        end_allocated_bytes=0, end_reserved_bytes=0, wall_time_s=1.0)
    memory = MemoryReport(backend="cpu", phases=(phase,), peak_allocated_bytes=allocated, peak_reserved_bytes=reserved)
    cfg = TrialConfig().replace(**{"workload.seed": number})
    result = TrialResult(config_hash=cfg.config_hash(), status="ok", backend="cpu", memory=memory, reward=reward)
    return TrialRecord(number=number, config=cfg, result=result, feasible=feasible, advisor_reason=reason,
                       objectives={"reward": reward, "peak_reserved_gb": reserved / GiB})


RECORDS = [
    _rec(0, 0.50, 10.0, reason="baseline"),  # dominated by 2 (same peak, lower reward)
    _rec(1, 0.40, 4.0),                       # front: lowest peak
    _rec(2, 0.70, 10.0),                      # front: best reward, peak 10
    _rec(3, 0.69, 6.0),                       # front: 98.6% of the best reward at 6 GiB
    _rec(4, 0.90, 3.0, feasible=False),       # infeasible: never on the front
    _rec(5, 0.60, 7.0),                       # dominated by 3
]


def test_front_is_the_non_dominated_feasible_records() -> None:
    assert [r.number for r in pareto_front(RECORDS)] == [1, 2, 3]


def test_max_reward_within_budget() -> None:
    assert recommend(RECORDS).record.number == 2
    rec = recommend(RECORDS, budget_gb=8.0)   # 2 is over 8 GiB
    assert rec.record.number == 3 and rec.baseline is not None and rec.baseline.number == 0
    assert "highest reward" in rec.reason


def test_max_reward_ties_go_to_lower_peak_then_fragmentation() -> None:
    tied = [_rec(0, 0.7, 5.0, frag=0.3), _rec(1, 0.7, 5.0, frag=0.1), _rec(2, 0.7, 6.0, frag=0.0)]
    # 0 and 1 do not dominate each other on (reward, peak); 2 is dominated by both
    assert recommend(tied).record.number == 1


def test_min_memory_keeps_reward_within_ratio() -> None:
    # best 0.70; 0.98 x 0.70 = 0.686: trial 3 (0.69) qualifies at 6 GiB, trial 1 (0.40) does not
    assert recommend(RECORDS, policy="min-memory").record.number == 3
    assert recommend(RECORDS, policy="min-memory", min_reward_ratio=0.5).record.number == 1


def test_nothing_feasible_and_bad_policy_are_errors() -> None:
    with pytest.raises(NoFeasibleTrialError):
        recommend([_rec(0, 0.5, 1.0, feasible=False)])
    with pytest.raises(NoFeasibleTrialError):
        recommend(RECORDS, budget_gb=1.0)
    with pytest.raises(ConfigError):
        recommend(RECORDS, policy="vibes")


def test_outputs_and_summary(tmp_path: Path) -> None:
    rec = recommend(RECORDS, budget_gb=8.0)
    pareto_path, yaml_path = write_outputs(rec, RECORDS, tmp_path)
    assert TrialConfig.load(yaml_path) == RECORDS[3].config
    doc = json.loads(pareto_path.read_text())
    assert doc["recommended"] == 3 and [row["number"] for row in doc["front"]] == [1, 2, 3]
    text = summary(rec)
    # reward 0.69 vs baseline 0.50 is +38%; peak 6 vs 10 GiB is -40%
    assert "#3" in text and "+38%" in text and "-40%" in text
