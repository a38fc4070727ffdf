"""TrialResult: what `autotune trial` writes, and what the tuner reads back. JSON on disk."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autotune import schema
from autotune.attrs import (  # re-exported: autotune.result is where importers found them
    USER_ATTR_CONFIG as USER_ATTR_CONFIG,
    USER_ATTR_REASON as USER_ATTR_REASON,
    USER_ATTR_RESULT as USER_ATTR_RESULT,
)
from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport

Status = Literal["ok", "oom", "error", "timeout", "prescreened"]


@dataclass(frozen=True, kw_only=True)
class RewardPoint:
    """The policy's score on the fixed evaluation prompts after `step` training iterations.

    One value per training seed, in seed order (`workload.seed`, `workload.seed + 1`, ...), so two
    configs trained at the same seeds can be compared seed by seed. Step 0 is the untrained policy.
    """

    step: int
    seed_rewards: tuple[float, ...]
    prompt_se: float = 0.0          # standard error over the evaluation prompts (the largest of the seeds')

    @property
    def mean(self) -> float:
        return sum(self.seed_rewards) / len(self.seed_rewards)


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """The outcome of one trial.

    `reward` is the trained policy's score on the fixed evaluation prompts (the same for every
    trial; exact from its probabilities where the task allows, see `autotune.rlhf.evaluation`),
    `reward_se` its standard error over prompts and `initial_reward` the untrained policy's score
    on the same set; `reward_curve` is the mean task reward of each training iteration's samples.
    `step_time_s` is the median seconds per iteration after the first, measured, or for a planned
    trial predicted by `autotune.tuner.step_time` (`step_time_source` says which, and on which device
    class); `predicted_step_time_s` keeps the prediction next to a measured time, so that the two can be
    compared. Each is None where it does not exist (a `fake` plan has no reward; a failed trial may
    have neither).
    """

    config_hash: str
    status: Status
    backend: Literal["cuda", "cpu", "fake"]
    message: str = ""                       # the error, OOM or timeout text; empty when ok
    failed_phase: str | None = None         # where an OOM or error happened
    memory: MemoryReport | None = None
    reward_curve: tuple[float, ...] = ()
    initial_reward: float | None = None
    reward: float | None = None
    reward_se: float | None = None          # standard error of `reward`; None where not computed
    step_time_s: float | None = None
    wall_time_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    # Where each objective came from, for every output: e.g. "llama-1b, planned (simulator)" and
    # "smollm2-135m proxy, 8 steps". Empty in a result written by `autotune trial` itself.
    memory_source: str = ""
    reward_source: str = ""
    reward_key: str = ""                    # the reward run this trial's reward came from; "" for its own run
    # The evaluation score along the run: step 0 (untrained), a few points on the way, and the end,
    # one value per training seed. `reward` and `initial_reward` are the last and first points' means.
    reward_points: tuple[RewardPoint, ...] = ()
    step_time_source: str = ""              # "measured (cuda)", "predicted (A100-80)"; "" where not labelled
    predicted_step_time_s: float | None = None   # the prediction, also where step_time_s is measured

    @property
    def step_time_ratio(self) -> float | None:
        """measured / predicted step time, where a trial has both."""
        if (self.step_time_s is None or not self.predicted_step_time_s
                or not self.step_time_source.startswith("measured")):
            return None
        return self.step_time_s / self.predicted_step_time_s
    # A trial over several ranks: `memory` is the report of the rank with the highest reserved peak
    # (the memory objective is the maximum over ranks), `rank_memory` every rank's, in rank order.
    world_size: int = 1
    rank: int = 0                           # the rank that wrote this result (0 for a combined one)
    rank_memory: tuple[MemoryReport | None, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def save(self, path: str | Path) -> None:
        schema.dump_json(self, path)

    @classmethod
    def load(cls, path: str | Path) -> TrialResult:
        return schema.load_json(cls, path)

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrialResult:
        return schema.from_dict(cls, data)


def combine_ranks(results: dict[int, TrialResult], world_size: int) -> TrialResult:
    """One result for a trial that ran on `world_size` ranks, from the per-rank results found.

    Rank 0 supplies reward and timings. The status is the first failing rank's (a missing rank is an
    error: it died before it could write), so a rank that dies fails the whole trial with its reason.
    `memory` is the report of the rank with the highest reserved peak.

    Raises:
        ValueError: `results` is empty (there is nothing to describe the trial with).
    """
    if not results:
        raise ValueError("no rank wrote a result")
    first = results.get(0) or results[min(results)]
    reports = tuple(results[r].memory if r in results else None for r in range(world_size))
    measured = [m for m in reports if m is not None]
    memory = max(measured, key=lambda m: m.peak_reserved_bytes) if measured else None
    status: Status = "ok"
    message, failed_phase = first.message, None
    failed = [r for r in sorted(results) if not results[r].ok]
    missing = [r for r in range(world_size) if r not in results]
    if failed:     # a rank that says why it failed explains more than one that was killed after it
        bad = results[failed[0]]
        status, message, failed_phase = bad.status, f"rank {failed[0]}: {bad.message}", bad.failed_phase
    elif missing:
        status, message = "error", f"rank {missing[0]} ended without a result (killed, or ended by its launcher)"
    return dataclasses.replace(first, status=status, message=message, failed_phase=failed_phase, memory=memory,
                               world_size=world_size, rank=0, rank_memory=reports)


def rank_result_path(out: str | Path, rank: int) -> Path:
    """Where rank `rank` of a several-rank trial writes its own result, next to `out` (result.rank1.json)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}{out.suffix}")


def read_rank_results(out: str | Path, world_size: int) -> dict[int, TrialResult]:
    """The per-rank results that exist for `out`; an unreadable one counts as missing."""
    found: dict[int, TrialResult] = {}
    for r in range(world_size):
        path = rank_result_path(out, r)
        if path.is_file():
            try:
                found[r] = TrialResult.load(path)
            except Exception:  # noqa: BLE001 - half a file from a killed rank is a missing result
                continue
    return found


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One finished study trial as the tuner, the tracker and the exporters see it.

    The tuner stores `config`, `result` and `advisor_reason` in the Optuna trial's user attributes
    (keys in `autotune.attrs`), so any process can rebuild records from the storage alone.
    """

    number: int
    config: TrialConfig
    result: TrialResult
    objectives: dict[str, float] = field(default_factory=dict)   # metric name -> value, as told to Optuna
    feasible: bool = True
    advisor_reason: str | None = None    # why the advisor proposed it; "baseline" for the baseline trial

