"""The settings of one `autotune search` invocation, and their checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from autotune import schema
from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.rlhf.reward_run import DEFAULT_REWARD_SEEDS, MAX_REWARD_SEEDS, MAX_REWARD_STEPS
from autotune.tuner.launcher import Launcher
from autotune.tuner.recommend import DEFAULT_MIN_KEPT
from autotune.tuner.space import SearchSpace


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """One `autotune search` invocation."""

    study: str
    space: SearchSpace
    n_trials: int = 12
    storage: str | None = None              # None: sqlite:///runs/<study>/optuna.db
    timeout_s: float | None = None          # for the whole search; trials then in flight finish
    budget_gb: float | None = None          # None: the space's budget_gb
    gpus: tuple[str, ...] = ()              # empty: one trial at a time on the CPU
    gpus_per_trial: int = 1                 # GPUs (ranks) of one trial; `gpus` splits into groups of this size
    world_size: int | None = None           # ranks per trial without `gpus` (CPU trials on gloo); None: the space's
    sampler: str = "tpe"
    seed: int | None = None
    prescreen: bool = True                  # `autotune plan` before each GPU trial
    advisor: bool = True
    launcher: Launcher = field(default_factory=Launcher)
    heartbeat_interval_s: int = 10
    grace_period_s: int | None = None       # None: Optuna's default, two intervals
    tracking_uri: str | None = None
    track: bool = True
    policy: str = "fastest"                 # see autotune.tuner.recommend
    min_reward_ratio: float = DEFAULT_MIN_KEPT   # fastest, min-memory: the share of the baseline's reward gain to keep
    reward_reference: str = "baseline"      # min-memory measures the ratio against "baseline" or "best"
    reward_proxy: str | None = None         # None: fidelity's choice (the full model where it runs)
    reward_seeds: int = DEFAULT_REWARD_SEEDS   # training seeds each reward run averages
    reward_steps: int | None = None         # None: from DEFAULT_REWARD_STEPS, doubled until the baseline learns
    cpu_workers: int = 2                    # parallel planned trials without GPUs (each single-threaded)
    plan_memory: bool = False               # plan every trial's memory even where the host could run it
    device_class: str | None = None         # step-time predictions' device (step_time.DEVICES); None: the budget's

    def check(self) -> None:
        """Fail before any study or trial exists: every number finite and in range, and every model,
        the task and the prompts file usable.

        Raises:
            ConfigError: naming each problem.
        """
        self.check_numbers()
        check_models(self.space.base, self.reward_proxy)

    def check_numbers(self) -> None:
        """Every number of the settings finite and in range, before anything runs (nan passes any
        comparison-based check, and `timeout_s=nan` used to mean no timeout at all).

        Raises:
            ConfigError: naming each number out of range.
        """
        problems = []
        for key in ("budget_gb", "timeout_s", "min_reward_ratio", "grace_period_s"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                problems.append(f"{key}: must be a positive, finite number, got {value}")
        if not 1 <= self.reward_seeds <= MAX_REWARD_SEEDS:
            problems.append(f"reward_seeds: must be 1 to {MAX_REWARD_SEEDS}, got {self.reward_seeds}")
        if self.reward_steps is not None and not 1 <= self.reward_steps <= MAX_REWARD_STEPS:
            problems.append(f"reward_steps: must be 1 to {MAX_REWARD_STEPS}, got {self.reward_steps}")
        if not self.min_reward_ratio <= 1:
            problems.append(f"min_reward_ratio: must be at most 1, got {self.min_reward_ratio}")
        if self.launcher.timeout_s is not None and not (math.isfinite(self.launcher.timeout_s)
                                                        and self.launcher.timeout_s > 0):
            problems.append(f"trial timeout: must be a positive, finite number, got {self.launcher.timeout_s}")
        if problems:
            raise ConfigError(problems, source="search settings")


def check_models(base: TrialConfig, proxy: str | None = None) -> None:
    """Fail before any study or trial exists when a model is neither a preset nor a local folder, or
    the task or prompts file is unusable; otherwise every trial would start, fail the same way, and
    leave an empty study behind."""
    from autotune.rlhf.models import check_model  # imports transformers: once per search, not per trial
    from autotune.rlhf.tasks import TASKS, read_prompts

    for name in dict.fromkeys((base.model.actor, base.model.critic_name, base.model.reference_name,
                               base.model.reward_name, proxy)):
        if name is not None:
            check_model(name)
    if base.workload.task not in TASKS:
        raise ConfigError(f"workload.task: unknown task {schema.show(base.workload.task)}; "
                          f"choose one of {', '.join(TASKS)}")
    if base.workload.prompts_file is not None:
        read_prompts(base.workload.prompts_file)
