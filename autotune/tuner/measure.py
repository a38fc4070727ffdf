"""Measures one trial's objectives, each where autotune.tuner.fidelity says, and labels their sources.

The controller hands every claimed trial to `Measurer.measure`. Memory comes from a real run (a
short one on a GPU, the whole trial on a CPU host that holds the model) or from the plan at full
size; a reward that the trial did not measure itself comes from the study's reward cache, or from
one `autotune reward` subprocess per reward key, shared by every trial with that key.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.attrs import STUDY_ATTR_BASELINE_PLAN, STUDY_ATTR_REWARD_STEPS
from autotune.config import TrialConfig
from autotune.errors import ConfigError
from autotune.result import Status, TrialResult
from autotune.tuner import fidelity, step_time
from autotune.tuner.launcher import Launcher, host_available_gb, plan, prescreen, run_reward, run_trial

if TYPE_CHECKING:
    import optuna

    from autotune.rlhf.reward_run import RewardOutcome

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True, kw_only=True)
class Measured:
    """One trial's result (None when cancelled) and the seconds its subprocesses ran."""

    result: TrialResult | None
    subprocess_s: float


class Measurer:
    """Chooses how a study's trials are measured (`prepare`, once) and measures each (`measure`)."""

    def __init__(self, *, study: optuna.Study, out_dir: Path, launcher: Launcher, budget_gb: float,
                 gpus: tuple[str, ...], prescreen: bool, reward_proxy: str | None, cancel: threading.Event,
                 on_note: Callable[[str], None] | None = None, force_planned: bool = False, reward_seeds: int = 1,
                 reward_steps: int | None = None, device_class: str | None = None):
        self.study, self.out_dir, self.launcher, self.budget_gb = study, out_dir, launcher, budget_gb
        self.gpus, self.prescreen, self.cancel = gpus, prescreen, cancel
        self.force_planned = force_planned and not gpus
        self.proxy: str | None = reward_proxy
        self.reward_seeds = reward_seeds
        self.fixed_reward_steps = reward_steps     # None: settle the length on the baseline (`_settle_reward_steps`)
        self.reward_steps: int | None = reward_steps
        # the device class planned trials' step times are predicted on: named, else the budget's card
        self.device = step_time.device(device_class) if device_class else step_time.device_for_budget(budget_gb)
        self.mode: fidelity.MemoryMode = "gpu" if gpus else "cpu"
        self.host_need_gb: float | None = None
        self.reward_runs = self.reward_hits = 0   # for trials
        self.settling_runs = 0                     # the baseline's runs that chose the length
        self._note = on_note or (lambda line: log.info("%s", line))
        self._key_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()
        self._plans: dict[str, TrialResult] = {}
        # Workers of one study share its runs folder; a folder that two of them write at once loses
        # one's output (one worker unlinks the file the other just wrote), so each writes its own.
        self.worker = f"{socket.gethostname()}-{os.getpid()}"

    # -- once per invocation ----------------------------------------------------------------------
    def prepare(self, baseline: TrialConfig) -> None:
        """Pick the memory mode and the reward proxy; on the CPU, plan the baseline to size the host.

        Raises:
            ConfigError: when the model cannot run on this host and no reward proxy is known for it.
        """
        if self.gpus:
            self._note(f"memory: short real runs on GPU {','.join(self.gpus)} ({fidelity.MEMORY_ITERATIONS} "
                       f"iterations); reward: {self.proxy or baseline.model.actor} reward runs, one per reward key")
            self._note_proxy()
            self._settle_reward_steps(baseline, gpu=self.gpus[0])
            return
        plan_dir = self.out_dir / "baseline-plan" / self.worker
        planned = self._plan(baseline, plan_dir)
        model = baseline.model.actor
        if planned is None or planned.memory is None:
            self._no_baseline_plan(model, plan_dir)
            return
        self.study.set_user_attr(STUDY_ATTR_BASELINE_PLAN, planned.to_dict())
        self.host_need_gb = fidelity.host_need_gb(planned)
        available = host_available_gb()
        fits = fidelity.choose_memory_mode(gpus=(), need_gb=self.host_need_gb, available_gb=available) == "cpu"
        self.mode = "cpu" if fits and not self.force_planned else "planned"
        need = f"{self.host_need_gb:.1f} GiB"
        if self.mode == "cpu":
            self._note(f"memory: real CPU runs of {model} (the baseline needs {need} of host memory, "
                       f"{available:.1f} GiB available); reward: from each run{self._seeds_unused()}")
            return
        if self.proxy is None and not fits:
            from autotune.rlhf.reward_run import default_proxy

            self.proxy = default_proxy(model)
            if self.proxy is None:
                raise ConfigError(f"{model} cannot run on this host ({need} of host memory needed, {available:.1f} "
                                  "GiB available) and autotune knows no reward proxy for it: pass --reward-proxy "
                                  "PRESET|PATH")
        why = "as asked (--plan-memory)" if fits else "as this host cannot run it"
        reward = f"{self.proxy} proxy" if self.proxy else model
        self._note(f"memory: {fidelity.memory_label(model, 'planned')}, {why} ({need} of host memory needed, "
                   f"{available:.1f} GiB available); reward: {reward} reward runs, one per reward key")
        self._note_proxy()
        self._settle_reward_steps(baseline, gpu=None)

    def _note_proxy(self) -> None:
        if self.proxy:
            self._note(f"reward proxy: {fidelity.PROXY_CAVEAT}")

    def _settle_reward_steps(self, baseline: TrialConfig, *, gpu: str | None) -> None:
        """Choose how long every reward run of the study trains: long enough for the baseline to learn.

        A reward that has not moved cannot rank anything, so the baseline's reward run comes first:
        while its gain over the untrained policy is under `gain.MIN_LEARNING_Z` standard errors, the
        runs double, up to `MAX_REWARD_STEPS`. The length is stored in the study, so every worker and
        every resume trains the same length (`--reward-steps` fixes it and only reports the check).
        """
        from autotune.rlhf.reward_run import DEFAULT_REWARD_STEPS, MAX_REWARD_STEPS
        from autotune.tuner import gain

        stored = self.study.user_attrs.get(STUDY_ATTR_REWARD_STEPS)
        if stored is not None and self.fixed_reward_steps in (None, stored):
            self.reward_steps = int(stored)
            self._note(f"reward runs: {self._length()}, as this study settled them")
            return
        steps = self.fixed_reward_steps or DEFAULT_REWARD_STEPS
        while True:
            self.reward_steps = steps
            outcome = self._reward(baseline, gpu, settling=True)
            if outcome is None:   # cancelled: settle again on the next start
                return
            if not outcome.ok:
                self._note(f"reward runs: {self._length()}; the baseline's run failed ({outcome.status}: "
                           f"{outcome.message})")
                break
            check = gain.learning_from(outcome.points, steps=steps)
            if check is None:
                break
            if check.learned:
                self._note(f"reward runs: {self._length()}: the baseline's {check.describe()}")
                break
            if self.fixed_reward_steps is not None or steps * 2 > MAX_REWARD_STEPS:
                cap = "as --reward-steps fixes" if self.fixed_reward_steps is not None else \
                    f"the cap is {MAX_REWARD_STEPS} steps"
                self._note(f"reward runs: {self._length()} ({cap}): the baseline's {check.describe()}; rewards will "
                           "not be compared, and the recommendation rests on memory alone")
                break
            self._note(f"reward runs: {steps} steps are too short: the baseline's {check.describe()}; "
                       f"doubling to {steps * 2} steps")
            steps *= 2
        self.study.set_user_attr(STUDY_ATTR_REWARD_STEPS, steps)

    def _length(self) -> str:
        seeds = f" x {self.reward_seeds} seeds" if self.reward_seeds > 1 else " x 1 seed"
        return f"{self.reward_steps} steps{seeds}"

    def _no_baseline_plan(self, model: str, plan_dir: Path) -> None:
        """The baseline could not be planned: a small model still runs for real; a big one is an error."""
        from autotune.rlhf.reward_run import CPU_FULL_SIZE_MAX_PARAMS, default_proxy

        where = f"see {plan_dir / 'plan.log'}"
        if self.force_planned or default_proxy(model, cuda=False) is not None:
            raise ConfigError(f"the full-size plan of the baseline failed ({where}), so autotune cannot size "
                              f"{model}'s trials on this host")
        self.mode = "cpu"
        self._note(f"memory: real CPU runs of {model} (its baseline could not be planned, {where}; at most "
                   f"{CPU_FULL_SIZE_MAX_PARAMS / 1e6:.0f}M parameters, so it runs as is); reward: from each run"
                   f"{self._seeds_unused()}")

    def _seeds_unused(self) -> str:
        """Real CPU trials train once and score their own run: say so when more seeds were asked for."""
        if self.reward_seeds == 1:
            return ""
        return f" (one seed: --reward-seeds {self.reward_seeds} applies to reward runs only)"

    # -- once per trial -----------------------------------------------------------------------------
    def measure(self, config: TrialConfig, trial_dir: Path, gpu: str | None) -> Measured:
        """Measure `config`; the result names where its memory and its reward came from."""
        if self.mode == "gpu":
            return self._gpu_trial(config, trial_dir, gpu)
        if self.mode == "cpu":
            available = host_available_gb()
            if self.host_need_gb is None or self.host_need_gb <= available:
                launched = run_trial(config, trial_dir, launcher=self.launcher, cancel=self.cancel)
                result = None if launched.cancelled else _labelled(
                    launched.result, fidelity.memory_label(config.model.actor, "cpu", iterations=config.workload.steps),
                    fidelity.reward_label(config.model.actor, config.workload.steps))
                if result is not None and result.step_time_s is not None:
                    result = dataclasses.replace(result, step_time_source="measured (cpu)")
                return Measured(result=result, subprocess_s=launched.subprocess_s)
            # the host has less free memory now than when the study started: never launch it
            return self._planned_trial(config, trial_dir, gpu=None,
                                       note=fidelity.host_shortfall(self.host_need_gb, available))
        return self._planned_trial(config, trial_dir, gpu=None, note="")

    def _gpu_trial(self, config: TrialConfig, trial_dir: Path, gpu: str | None) -> Measured:
        if self.prescreen:
            screened = prescreen(config, trial_dir, launcher=self.launcher, budget_gb=self.budget_gb)
            if screened is not None:
                return Measured(result=_labelled(screened, fidelity.memory_label(config.model.actor, "planned"), ""),
                                subprocess_s=0.0)
        iterations = min(config.workload.steps, fidelity.MEMORY_ITERATIONS)
        launched = run_trial(config.replace(**{"workload.steps": iterations}), trial_dir, launcher=self.launcher,
                             gpu=gpu, cancel=self.cancel)
        if launched.cancelled:
            return Measured(result=None, subprocess_s=launched.subprocess_s)
        memory = _labelled(launched.result, fidelity.memory_label(config.model.actor, "gpu", iterations=iterations), "")
        if not memory.ok:
            return Measured(result=dataclasses.replace(memory, config_hash=config.config_hash()),
                            subprocess_s=launched.subprocess_s)
        outcome = self._reward(config, gpu)
        if outcome is None:
            return Measured(result=None, subprocess_s=launched.subprocess_s)
        result = combine(config, memory, outcome, step_time_s=memory.step_time_s)
        if result.step_time_s is not None:   # measured; the prediction is kept beside it for their ratio
            result = dataclasses.replace(result, step_time_source="measured (cuda)",
                                         predicted_step_time_s=self.predict(config).total_s)
        return Measured(result=result, subprocess_s=launched.subprocess_s)

    def _planned_trial(self, config: TrialConfig, trial_dir: Path, *, gpu: str | None, note: str) -> Measured:
        label = fidelity.memory_label(config.model.actor, "planned")
        planned = self._plan(config, trial_dir)
        if planned is None or planned.memory is None or planned.status == "error":
            why = planned.message if planned is not None else "the plan did not finish (see plan.log)"
            status: Status = "prescreened" if note else "error"   # not launched for lack of host memory: infeasible
            message = f"{note}; and the plan failed: {why}" if note else f"plan failed: {why}"
            return Measured(result=TrialResult(config_hash=config.config_hash(), status=status, backend="fake",
                                               message=message, memory_source=label), subprocess_s=0.0)
        outcome = self._reward(config, gpu)
        if outcome is None:
            return Measured(result=None, subprocess_s=planned.wall_time_s)
        predicted = self.predict(config)
        result = dataclasses.replace(
            combine(config, _over_budget(planned, self.budget_gb), outcome, step_time_s=predicted.total_s),
            step_time_source=predicted.label, predicted_step_time_s=predicted.total_s)
        if note:
            result = dataclasses.replace(result, message="; ".join(filter(None, (f"not run on the CPU: {note}",
                                                                                 result.message))))
        return Measured(result=_labelled(result, label, result.reward_source), subprocess_s=planned.wall_time_s)

    def predict(self, config: TrialConfig) -> step_time.StepTimePrediction:
        """`config`'s predicted step time on this study's device class (autotune.tuner.step_time)."""
        return step_time.predict(config, self.device)

    def _plan(self, config: TrialConfig, trial_dir: Path) -> TrialResult | None:
        """The full-size plan of `config` without a device limit (so an overrun shows its whole size)."""
        unlimited = config.replace(device_memory_gb=None)
        key = unlimited.config_hash()
        if key not in self._plans:
            planned = plan(unlimited, trial_dir, launcher=self.launcher)
            if planned is None:
                return None
            self._plans[key] = planned
        return self._plans[key]

    def _reward(self, config: TrialConfig, gpu: str | None, *, settling: bool = False) -> RewardOutcome | None:
        """The reward of `config`'s reward key: from the study's cache, else one reward run (None: cancelled)."""
        from autotune.rlhf.reward_run import reward_config, reward_key
        from autotune.tuner.reward_cache import RewardCache

        if self.reward_steps is not None:   # set the length first: the key canonicalises against it
            config = config.replace(**{"workload.steps": self.reward_steps})
        run_config = reward_config(config, proxy=self.proxy)
        key = reward_key(run_config, seeds=self.reward_seeds)
        with self._locks_lock:
            lock = self._key_locks[key]
        with lock:   # two workers wanting one key: the second waits and reads the first's outcome
            cache = RewardCache(self.study)
            cached = cache.get(key)
            if cached is not None:
                self.reward_hits += not settling
                return cached
            run_dir = self.out_dir / "rewards" / key / self.worker
            # while the length is settled nothing else runs: the baseline's seeds take every core
            jobs = (os.cpu_count() or 1) if settling and gpu is None else 1
            outcome = run_reward(run_config, run_dir, launcher=self.launcher, proxy_for=config.model.actor, gpu=gpu,
                                 cancel=self.cancel, seeds=self.reward_seeds, jobs=jobs)
            if outcome is None:
                return None
            if settling:
                self.settling_runs += 1
            else:
                self.reward_runs += 1
            if outcome.key != key:
                log.warning("reward run %s reported key %s; caching it under %s", key, outcome.key, key)
                outcome = dataclasses.replace(outcome, key=key)
            cache.put(outcome)
            return outcome


def combine(config: TrialConfig, memory: TrialResult, outcome: RewardOutcome, *,
            step_time_s: float | None) -> TrialResult:
    """One trial's result from its memory measurement (run or plan) and its reward run."""
    status, message = memory.status, memory.message
    if status == "ok" and outcome.status != "ok":
        status, message = "error", f"reward run {outcome.status}: {outcome.message}"
    return dataclasses.replace(
        memory, config_hash=config.config_hash(), status=status, message=message,
        reward_curve=tuple(outcome.reward_curve), initial_reward=outcome.initial_reward, reward=outcome.reward,
        reward_se=outcome.reward_se, reward_points=outcome.points, step_time_s=step_time_s,
        reward_source=outcome.label, reward_key=outcome.key)


def _over_budget(planned: TrialResult, budget_gb: float) -> TrialResult:
    """A plan over the budget is a prescreened (infeasible) trial; its whole planned size is kept."""
    if planned.ok and planned.memory is not None and planned.memory.peak_reserved_gb > budget_gb:
        return dataclasses.replace(
            planned, status="prescreened", failed_phase=planned.memory.peak_phase,
            message=f"planned peak reserved {planned.memory.peak_reserved_gb:.2f} GiB (in "
            f"{planned.memory.peak_phase}) exceeds the {budget_gb:g} GiB budget")
    return planned


def _labelled(result: TrialResult, memory_source: str, reward_source: str) -> TrialResult:
    return dataclasses.replace(result, memory_source=memory_source, reward_source=reward_source)
