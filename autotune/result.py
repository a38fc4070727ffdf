"""TrialResult: what `autotune trial` writes, and what the tuner reads back. JSON on disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autotune import schema
from autotune.config import TrialConfig
from autotune.memory.report import MemoryReport

Status = Literal["ok", "oom", "error", "timeout", "prescreened"]


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """The outcome of one trial.

    `reward` is the trained policy's score on the fixed evaluation prompts (the same for every
    trial; exact from its probabilities where the task allows, see `autotune.rlhf.evaluation`),
    `reward_se` its standard error over prompts and `initial_reward` the untrained policy's score
    on the same set; `reward_curve` is the mean task reward of each training iteration's samples.
    `step_time_s` is the median seconds per iteration after the first. Each is None where it does
    not exist (a `fake` plan has no reward; a failed trial may have neither).
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


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One finished study trial as the tuner, the tracker and the exporters see it.

    The tuner stores `config`, `result` and `advisor_reason` in the Optuna trial's user attributes
    (keys in `USER_ATTR_*`), so any process can rebuild records from the storage alone.
    """

    number: int
    config: TrialConfig
    result: TrialResult
    objectives: dict[str, float] = field(default_factory=dict)   # metric name -> value, as told to Optuna
    feasible: bool = True
    advisor_reason: str | None = None    # why the advisor proposed it; "baseline" for the baseline trial


USER_ATTR_CONFIG = "autotune.config"
USER_ATTR_RESULT = "autotune.result"
USER_ATTR_REASON = "autotune.advisor_reason"
