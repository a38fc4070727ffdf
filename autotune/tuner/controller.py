"""The controller: an Optuna multi-objective study that runs trials, learns from them, and advises.

One worker thread per GPU (one for the CPU) repeats: claim a trial (ask), build its config, run it
as a subprocess, tell Optuna, log it, and let the advisor queue a targeted follow-up. The stop rule
counts trials that carry a result in the storage, so any number of workers on any number of
machines together finish exactly `n_trials`; a trial whose worker died goes stale (heartbeat) and
is re-queued by Optuna's RetryHeartbeatStaleTrialCallback.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune import owner, schema
from autotune.config import MemoryConfig, TrialConfig
from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.result import USER_ATTR_CONFIG, USER_ATTR_REASON, USER_ATTR_RESULT, TrialRecord, TrialResult
from autotune.rlhf.reward_run import DEFAULT_REWARD_SEEDS, MAX_REWARD_SEEDS, MAX_REWARD_STEPS
from autotune.tuner import advisor, step_time, study as studies
from autotune.tuner.by_gpu import GpuRow, by_gpu, table_markdown
from autotune.tuner.convergence import progress_metrics
from autotune.tuner.definition import study_definition
from autotune.tuner.fidelity import choose_budget
from autotune.tuner.interrupts import deferred_signals, signals_to_flag
from autotune.tuner.launcher import Launcher, end_all
from autotune.tuner.measure import Measurer
from autotune.tuner.recommend import (
    DEFAULT_MIN_KEPT,
    Policy,
    Recommendation,
    recommend_study,
    store_policy,
    summary,
    write_outputs,
)
from autotune.tuner.scoring import score
from autotune.tuner.space import SearchSpace, apply_params, distributions, params_for, suggest

log = logging.getLogger(__name__)

USER_ATTR_SURPLUS = "autotune.surplus"    # claimed after the study was full; never ran
USER_ATTR_CANCELLED = "autotune.cancelled"
USER_ATTR_INVALID = "autotune.invalid"    # the sampled combination failed validation; why
USER_ATTR_OWNER = "autotune.owner"        # the controller running the trial: see autotune.owner
USER_ATTR_OWNER_TRIAL = "autotune.owner_trial"   # the trial number USER_ATTR_OWNER was written for
_WAIT_S = 0.5
_KILL_WAIT_S = 15.0     # how long an interrupted run waits for its workers to end their trials


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


@dataclass(frozen=True, kw_only=True)
class SearchOutcome:
    """The study's records after this invocation, the recommendation, and this run's timings."""

    records: tuple[TrialRecord, ...]
    recommendation: Recommendation | None
    summary: str | None = None              # the recommendation's summary, as printed and in MLflow
    by_gpu: tuple[GpuRow, ...] = ()         # the fastest config for each card size
    trials_run: int
    trial_wall_s: float                     # controller wall time per trial, summed (claim to record)
    subprocess_s: float                     # of which the trial subprocesses ran
    memory_mode: str = "cpu"                # fidelity.MemoryMode of this invocation
    reward_runs: int = 0                    # reward runs this invocation started
    reward_hits: int = 0                    # trials whose reward came from the study's reward cache
    settling_runs: int = 0                  # the baseline's reward runs that chose the reward runs' length

    @property
    def overhead_share(self) -> float:
        """Controller time outside trial subprocesses, as a share of trial time."""
        return (self.trial_wall_s - self.subprocess_s) / self.subprocess_s if self.subprocess_s else 0.0


def gpu_groups(gpus: tuple[str, ...], per_trial: int) -> tuple[str, ...]:
    """`gpus` cut into consecutive groups of `per_trial`, each as CUDA_VISIBLE_DEVICES text ("0,1").

    Raises:
        ConfigError: the GPUs do not split evenly, so one would sit idle.
    """
    if len(gpus) % per_trial:
        raise ConfigError(f"--gpus lists {len(gpus)} GPUs, which do not split into groups of --gpus-per-trial "
                          f"{per_trial}; list a multiple of {per_trial}")
    return tuple(",".join(gpus[i:i + per_trial]) for i in range(0, len(gpus), per_trial))


def baseline_config(space: SearchSpace) -> TrialConfig:
    """AdamW with no interventions, on the space's base (model, workload, device, budget)."""
    optimizer = dataclasses.replace(space.base.optimizer, name="adamw", critic="adamw")
    return dataclasses.replace(space.base, optimizer=optimizer, memory=MemoryConfig())


def recommendation_summary(recommendation: Recommendation, device: step_time.Device) -> str:
    """The recommendation's summary with its predicted step time by phase on `device`: what
    `autotune search` prints, and the MLflow parent run's description."""
    cost = f"predicted on {device.name}: {step_time.predict(recommendation.record.config, device).describe()}"
    return summary(recommendation, cost=cost)


# The value of each dimension that keeps the least on the GPU; the corner trial takes every one the
# space offers (the partition's density takes its lowest), so the front's low-memory end is known
# from the start rather than left to a sampler that must combine five choices by chance.
_SAVING: dict[str, object] = {
    "optimizer.name": "frugal", "optimizer.critic": "frugal",
    "memory.offload_reference": True, "memory.offload_reward": True,
    "memory.actor_gradient_checkpointing": True, "memory.critic_gradient_checkpointing": True,
}
CORNER_REASON = "every memory saver in the space (the low-memory corner)"


def corner_config(space: SearchSpace) -> TrialConfig | None:
    """The space's low-memory corner, or None when the space has no known saver (or it is invalid)."""
    params: dict[str, object] = {}
    for dim in space.searched:
        if dim.name == "optimizer.partition.density":
            params[dim.name] = min(dim.choices) if dim.kind == "categorical" else dim.low
        elif dim.name in _SAVING and _SAVING[dim.name] in dim.choices:
            params[dim.name] = _SAVING[dim.name]
    if not params:
        return None
    try:
        return apply_params(space, params)
    except ConfigError:
        return None


def with_budget(space: SearchSpace, budget_gb: float | None) -> SearchSpace:
    """Simulated devices (cpu, fake) get the budget as their capacity, so over-budget runs OOM."""
    if budget_gb is None or space.base.device == "cuda":
        return space
    return space.rebase({"device_memory_gb": budget_gb})


def _check_numbers(settings: SearchSettings) -> None:
    """Every number of the settings finite and in range, before anything runs (nan passes any
    comparison-based check, and `timeout_s=nan` used to mean no timeout at all)."""
    problems = []
    for key in ("budget_gb", "timeout_s", "min_reward_ratio", "grace_period_s"):
        value = getattr(settings, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"{key}: must be a positive, finite number, got {value}")
    if not 1 <= settings.reward_seeds <= MAX_REWARD_SEEDS:
        problems.append(f"reward_seeds: must be 1 to {MAX_REWARD_SEEDS}, got {settings.reward_seeds}")
    if settings.reward_steps is not None and not 1 <= settings.reward_steps <= MAX_REWARD_STEPS:
        problems.append(f"reward_steps: must be 1 to {MAX_REWARD_STEPS}, got {settings.reward_steps}")
    if not settings.min_reward_ratio <= 1:
        problems.append(f"min_reward_ratio: must be at most 1, got {settings.min_reward_ratio}")
    if settings.launcher.timeout_s is not None and not (math.isfinite(settings.launcher.timeout_s)
                                                        and settings.launcher.timeout_s > 0):
        problems.append(f"trial timeout: must be a positive, finite number, got {settings.launcher.timeout_s}")
    if problems:
        raise ConfigError(problems, source="search settings")


def _definition(space: SearchSpace, settings: SearchSettings, budget_gb: float) -> dict[str, object]:
    """What defines this study (autotune.tuner.definition): a resume or a joining worker must match it."""
    return study_definition(directions={o.metric: o.direction for o in space.objectives},
                            ranges=distributions(space), base=space.base.to_dict(), budget_gb=budget_gb,
                            reward_run={"seeds": settings.reward_seeds, "proxy": settings.reward_proxy,
                                        "steps": settings.reward_steps})


def _check_models(base: TrialConfig, proxy: str | None = None) -> None:
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


class Controller:
    """Runs one search invocation against a (possibly shared) study. Use `run()` once."""

    def __init__(self, settings: SearchSettings, *,
                 on_record: Callable[[TrialRecord, list[TrialRecord]], None] | None = None,
                 on_note: Callable[[str], None] | None = None):
        _check_numbers(settings)
        _check_models(settings.space.base, settings.reward_proxy)
        self.settings = settings
        given = settings.budget_gb if settings.budget_gb is not None else settings.space.budget_gb
        self.budget = choose_budget(given, settings.gpus)   # never missing: the GPU's size or a stated default
        self.budget_gb: float = self.budget.gb
        self.space = with_budget(settings.space, self.budget_gb)
        self.gpu_groups = gpu_groups(settings.gpus, settings.gpus_per_trial)
        if settings.gpus_per_trial > 1:      # each trial's ranks are the GPUs of its group
            self.space = self.space.rebase({"world_size": settings.gpus_per_trial})
        self.storage_url = settings.storage or studies.default_storage(settings.study)
        sampler = studies.make_sampler(settings.sampler, settings.seed)   # a bad seed fails before any file exists
        with deferred_signals():   # Optuna creates its tables in steps: a Ctrl-C waits until they all exist
            self.storage = studies.open_storage(self.storage_url, heartbeat_interval_s=settings.heartbeat_interval_s,
                                                grace_period_s=settings.grace_period_s)
            self.study = studies.open_study(
                settings.study, self.storage, directions=self.space.directions,
                objectives=[o.metric for o in self.space.objectives], sampler=sampler, budget_gb=self.budget_gb,
                distributions=distributions(self.space), definition=_definition(self.space, settings, self.budget_gb))
            store_policy(self.study, Policy(name=settings.policy, min_reward_ratio=settings.min_reward_ratio,
                                            reference=settings.reward_reference))
        self.trials_dir = studies.study_dir(settings.study) / "trials"
        self.cancel = threading.Event()
        self.measurer = Measurer(study=self.study, out_dir=studies.study_dir(settings.study),
                                 launcher=settings.launcher,
                                 budget_gb=self.budget_gb, gpus=settings.gpus, prescreen=settings.prescreen,
                                 reward_proxy=settings.reward_proxy, cancel=self.cancel, on_note=on_note,
                                 force_planned=settings.plan_memory, reward_seeds=settings.reward_seeds,
                                 reward_steps=settings.reward_steps, device_class=settings.device_class)
        self.lock = threading.Lock()       # one ask/tell at a time keeps the surplus check exact per process
        # advisor proposals with the config each one changes
        self.pending: collections.deque[tuple[advisor.Proposal, TrialConfig]] = collections.deque()
        self.last_advised = False
        self.on_record = on_record
        self.tracker = _open_tracker(settings, self.storage_url) if settings.track else None
        self._timings: list[tuple[float, float]] = []
        self._errors: list[BaseException] = []
        self._outputs: tuple[Path | None, Path | None] = (None, None)
        self._deadline = None if settings.timeout_s is None else time.monotonic() + settings.timeout_s
        self._signals: list[int] = []
        self._busy = 0                     # workers still running
        self._all_done = threading.Event()
        self._grace_s = settings.grace_period_s or 2 * settings.heartbeat_interval_s

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        """Run workers until the study holds `n_trials` results; recommend; write the outputs.

        Ctrl-C (SIGINT) or SIGTERM ends the running trials, re-queues their configs and raises
        KeyboardInterrupt, leaving the study consistent, so the same command resumes it. The
        signals only set a flag (so no write to the study or MLflow is cut half-way), and the main
        thread waits on an Event rather than in Thread.join, whose interruption on Python 3.11 can
        make a live thread look finished.
        """
        workers: list[threading.Thread] = []
        try:
            with signals_to_flag(self._on_signal):
                self._enqueue_baseline()
                self.measurer.prepare(baseline_config(self.space))   # may plan the baseline: the host's fit
                if self.tracker is not None:
                    self.tracker.start_search(self._tracking_settings())
                workers = self._workers()
                self._busy = len(workers)
                for w in workers:
                    w.start()
                while not self._all_done.wait(_WAIT_S):
                    pass
                if not self._signals and not self._errors:
                    return self._finish()
        except BaseException as exc:
            # an error before or after the trials, or a KeyboardInterrupt where no handler could be
            # installed (not the main thread)
            self.cancel.set()
            if any(w.is_alive() for w in workers):
                self._all_done.wait(_KILL_WAIT_S)
            self._close(None, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            end_all()   # whatever state the workers are in, no trial outlives this call
        if self._signals:
            self._close(None, "KILLED")
            raise KeyboardInterrupt
        self._close(None, "FAILED")
        raise self._errors[0]

    def _workers(self) -> list[threading.Thread]:
        """One per GPU group (`gpus_per_trial` GPUs each); on the CPU one, or `cpu_workers` for planned trials
        (single-threaded plans and reward runs, so one per core keeps the host busy)."""
        cpu_slots = (None,) * (self.settings.cpu_workers if self.measurer.mode == "planned" else 1)
        return [threading.Thread(target=self._worker, args=(gpu,), name=f"trial-worker-{gpu or 'cpu'}-{i}", daemon=True)
                for i, gpu in enumerate(self.gpu_groups or cpu_slots)]

    def _on_signal(self, signum: int) -> None:
        """The first SIGINT or SIGTERM ends the running trials gently; a second kills them now."""
        self._signals.append(signum)
        if len(self._signals) == 1:
            log.warning("%s: ending the running trials (again to kill them now)", signal.Signals(signum).name)
            self.cancel.set()
        else:
            end_all()

    def _worker(self, gpu: str | None) -> None:
        try:
            while not self.cancel.is_set():
                claimed = self._claim()
                if claimed is None:
                    return
                if claimed == "wait":
                    self.cancel.wait(_WAIT_S)
                    continue
                self._run_one(claimed, gpu)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self._errors.append(exc)
            self.cancel.set()
        finally:
            with self.lock:
                self._busy -= 1
                if self._busy == 0:
                    self._all_done.set()

    def _claim(self) -> Any:
        """The next trial to run, "wait" while others finish the last ones, or None when done."""
        from optuna.exceptions import ExperimentalWarning
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        n = self.settings.n_trials
        with self.lock, warnings.catch_warnings():
            # The controller beats and fails stale trials itself, as it uses ask/tell rather than
            # Study.optimize; Optuna warns about exactly that, and that heartbeats are experimental.
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            fail_stale_trials(self.study)
            self._fail_orphans()
            trials = self.study.get_trials(deepcopy=False)
            done = sum(USER_ATTR_RESULT in t.user_attrs for t in trials if t.state.is_finished())
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done >= n or (self._deadline is not None and time.monotonic() > self._deadline):
                return None
            if done + running >= n:
                return "wait"
            self._enqueue_next_proposal(trials)
            trial = self.study.ask()
            # owned and beating from the first moment, so a controller that dies now leaves a trial
            # the next run recognises as orphaned (see _fail_orphans)
            trial.set_user_attr(USER_ATTR_OWNER, owner.this_process())
            trial.set_user_attr(USER_ATTR_OWNER_TRIAL, trial.number)   # after the owner: see _fail_orphans
            self.storage.record_heartbeat(trial._trial_id)
            if self._claims_before(trial.number) >= n:
                self._release(trial, USER_ATTR_SURPLUS, requeue=True)
                return "wait"
            if self._duplicate_baseline(trial):
                self._release(trial, USER_ATTR_SURPLUS, requeue=False)
                return "wait"
            return trial

    def _fail_orphans(self) -> None:
        """Fail, and re-queue, RUNNING trials that no live controller runs.

        Optuna's heartbeat only sees trials that beat at least once; a controller killed between
        ask() and its first beat left a trial RUNNING forever, and every later run waited for it.
        A trial is orphaned when its owner ran on this host and has exited, or when it has no owner
        of its own and is older than the heartbeat grace period. A re-queued copy carries the dead
        owner of the trial it retries until the worker that asked it writes over it; the owner is
        its own only once USER_ATTR_OWNER_TRIAL (written after the owner) names this trial.
        """
        from optuna.trial import TrialState

        now = datetime.datetime.now()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            holder = trial.user_attrs.get(USER_ATTR_OWNER)
            if holder is not None and trial.user_attrs.get(USER_ATTR_OWNER_TRIAL) == trial.number:
                orphaned = owner.is_dead(str(holder))
            else:
                orphaned = (now - (trial.datetime_start or now)).total_seconds() > self._grace_s
            if orphaned and self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                log.warning("trial %d: its controller (%s) is gone; failed and re-queued", trial.number, holder)
                callback = self.storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(self.study, self.storage.get_trial(trial._trial_id))

    def _duplicate_baseline(self, trial: Any) -> bool:
        """Two workers starting one study at once both queue a baseline; the first one counts."""
        if trial.user_attrs.get(USER_ATTR_REASON) != "baseline":
            return False
        from optuna.trial import TrialState

        # a stale or released baseline (failed without a result) was re-queued and does not count
        return any(t.number < trial.number and t.user_attrs.get(USER_ATTR_REASON) == "baseline"
                   and not (t.state == TrialState.FAIL and USER_ATTR_RESULT not in t.user_attrs)
                   for t in self.study.get_trials(deepcopy=False))

    def _claims_before(self, number: int) -> int:
        from optuna.trial import TrialState

        return sum(t.number < number and (t.state == TrialState.RUNNING or USER_ATTR_RESULT in t.user_attrs)
                   for t in self.study.get_trials(deepcopy=False))

    def _run_one(self, trial: Any, gpu: str | None) -> None:
        start = time.perf_counter()
        config, reason = self._config_for(trial)
        trial.set_user_attr(USER_ATTR_REASON, reason)
        trial_dir = self.trials_dir / str(trial.number)
        # Optuna has no public trial id; the storage's heartbeat API is keyed by it
        try:
            with _heartbeat(self.storage, trial._trial_id, self.settings.heartbeat_interval_s):
                result, subprocess_s = self._execute(trial, config, trial_dir, gpu)
        except BaseException:
            # e.g. runs/<study>/trials turned read-only: back to the queue, not RUNNING forever
            with self.lock:
                self._release(trial, USER_ATTR_CANCELLED, requeue=True)
            raise
        if result is None:       # cancelled: the config goes back to the queue for the resumed run
            with self.lock:
                self._release(trial, USER_ATTR_CANCELLED, requeue=True)
            return
        record = self._tell(trial, config, result, reason)
        self._after(record, trial_dir)
        self._timings.append((time.perf_counter() - start, subprocess_s))

    def _config_for(self, trial: Any) -> tuple[TrialConfig, str | None]:
        """An enqueued (advised, baseline or retried) trial carries its config; else sample one."""
        params = suggest(trial, self.space)
        stored = trial.user_attrs.get(USER_ATTR_CONFIG)
        if stored is not None:
            with schema.unchecked() if USER_ATTR_INVALID in trial.user_attrs else contextlib.nullcontext():
                return TrialConfig.from_dict(stored), trial.user_attrs.get(USER_ATTR_REASON)
        try:
            config = apply_params(self.space, params)
        except ConfigError as exc:
            # An invalid combination (e.g. optimizer offload with ZeRO 0) cannot run; it is recorded
            # as infeasible, with its own values and the reason, so the sampler and MLflow see what it was.
            config = apply_params(self.space, params, check=False)
            trial.set_user_attr(USER_ATTR_INVALID, str(exc))
        trial.set_user_attr(USER_ATTR_CONFIG, config.to_dict())
        return config, None

    def _execute(self, trial: Any, config: TrialConfig, trial_dir: Path,
                 gpu: str | None) -> tuple[TrialResult | None, float]:
        invalid = trial.user_attrs.get(USER_ATTR_INVALID)
        if invalid is not None:
            return TrialResult(config_hash=config.config_hash(), status="prescreened", backend=config.device,
                               message=f"invalid config: {invalid}"), 0.0
        measured = self.measurer.measure(config, trial_dir, gpu)
        return measured.result, measured.subprocess_s

    def _tell(self, trial: Any, config: TrialConfig, result: TrialResult, reason: str | None) -> TrialRecord:
        from optuna.trial import TrialState

        outcome = score(result, self.space, self.budget_gb)
        metrics = [o.metric for o in self.space.objectives]
        with self.lock:
            trial.set_user_attr(USER_ATTR_RESULT, result.to_dict())
            for name, value in outcome.constraints.items():
                trial.set_constraint(name, value)
            if outcome.state == "complete":
                self.study.tell(trial, list(outcome.values or ()))
            else:
                self.study.tell(trial, state=TrialState.FAIL)
        log.info("trial %d: %s%s", trial.number, result.status, f" ({outcome.note})" if outcome.note else "")
        objectives = studies.measured_objectives(result, metrics) if outcome.state == "complete" else {}
        return TrialRecord(number=trial.number, config=config, result=result, objectives=objectives,
                           feasible=outcome.feasible, advisor_reason=reason)

    def _after(self, record: TrialRecord, trial_dir: Path) -> None:
        records = studies.records_of(self.study)
        if self.tracker is not None:
            self.tracker.log_trial(record, trial_dir if trial_dir.is_dir() else None)
            self.tracker.log_progress(len(records), progress_metrics(records, self.budget_gb))
        with self.lock:
            self.last_advised = record.advisor_reason not in (None, "baseline")
            if self.settings.advisor:
                # newest advice first (it reads the latest trial), each record's rules in their order
                self.pending.extendleft(reversed([(p, record.config) for p in advisor.advise(record)]))
        if self.on_record is not None:
            self.on_record(record, records)

    # -- queueing ------------------------------------------------------------------------------
    def _enqueue_baseline(self) -> None:
        if self.study.get_trials(deepcopy=False):
            return   # resumed or joined: the first worker already queued them
        self._enqueue(baseline_config(self.space), "baseline")
        corner = corner_config(self.space)
        if corner is not None and self.settings.n_trials > 1:
            self._enqueue(corner, CORNER_REASON)

    def _enqueue_next_proposal(self, trials: list[Any]) -> None:
        """Queue one advisor proposal, alternating with sampled trials so neither starves."""
        from optuna.trial import TrialState

        if not self.pending or self.last_advised or any(t.state == TrialState.WAITING for t in trials):
            return
        tried = {json.dumps(t.user_attrs[USER_ATTR_CONFIG], sort_keys=True) for t in trials
                 if USER_ATTR_CONFIG in t.user_attrs}
        while self.pending:
            proposal, source = self.pending.popleft()
            try:
                config = proposal.apply(source)
            except ConfigError as exc:
                log.info("advisor %s: proposal invalid here (%s)", proposal.rule, exc)
                continue
            if json.dumps(config.to_dict(), sort_keys=True) not in tried:
                self._enqueue(config, proposal.reason)
                return

    def _enqueue(self, config: TrialConfig, reason: str) -> None:
        self.study.enqueue_trial(params_for(self.space, config),
                                 user_attrs={USER_ATTR_CONFIG: config.to_dict(), USER_ATTR_REASON: reason})

    def _release(self, trial: Any, marker: str, *, requeue: bool) -> None:
        """End a trial that must not count (surplus, duplicate or cancelled), re-queuing what it carried.

        A sampled surplus trial is not re-queued: the sampler proposes afresh next time.
        """
        from optuna.trial import TrialState

        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        carried = USER_ATTR_CONFIG in frozen.user_attrs and (marker == USER_ATTR_CANCELLED
                                                              or "fixed_params" in frozen.system_attrs)
        if requeue and carried:
            self.study.enqueue_trial(frozen.system_attrs.get("fixed_params", frozen.params), user_attrs={
                USER_ATTR_CONFIG: frozen.user_attrs[USER_ATTR_CONFIG],
                USER_ATTR_REASON: frozen.user_attrs.get(USER_ATTR_REASON)})
        trial.set_user_attr(marker, True)
        self.study.tell(trial, state=TrialState.FAIL)

    # -- the end -------------------------------------------------------------------------------
    def _finish(self) -> SearchOutcome:
        records = studies.records_of(self.study)
        recommendation = None
        try:
            recommendation = recommend_study(self.study, records)
        except NoFeasibleTrialError as exc:
            log.warning("no recommendation: %s", exc)
        rows = by_gpu(records, budget_gb=self.budget_gb, min_reward_ratio=self.settings.min_reward_ratio,
                      reference=self.settings.reward_reference)
        text = None
        if recommendation is not None:
            self._outputs = write_outputs(recommendation, records, studies.study_dir(self.settings.study),
                                          by_gpu=[row.to_dict() for row in rows])
            text = recommendation_summary(recommendation, self.measurer.device)
        self._close(recommendation, records=records, summary_text=text, rows=rows)
        return SearchOutcome(records=tuple(records), recommendation=recommendation, summary=text, by_gpu=tuple(rows),
                             trials_run=len(self._timings),
                             trial_wall_s=sum(t for t, _ in self._timings),
                             subprocess_s=sum(s for _, s in self._timings), memory_mode=self.measurer.mode,
                             reward_runs=self.measurer.reward_runs, reward_hits=self.measurer.reward_hits,
                             settling_runs=self.measurer.settling_runs)

    def _close(self, recommendation: Recommendation | None, status: str = "FINISHED",
               records: list[TrialRecord] | None = None, summary_text: str | None = None,
               rows: list[GpuRow] | None = None) -> None:
        if self.tracker is None:
            return
        if records is not None:
            self.tracker.finish_search(records, recommendation, *self._outputs, summary=summary_text,
                                       extra_markdown=table_markdown(rows) if rows else None)
        self.tracker.close(status)

    def _tracking_settings(self) -> dict[str, object]:
        s = self.settings
        return {"study": s.study, "space": self.space.source, "n_trials": s.n_trials, "sampler": s.sampler,
                "seed": s.seed, "budget_gb": self.budget_gb, "gpus": ",".join(s.gpus) or "cpu",
                "advisor": s.advisor, "prescreen": s.prescreen, "storage": self.storage_url,
                "budget_note": self.budget.note, "memory_mode": self.measurer.mode,
                "reward_proxy": self.measurer.proxy or "none", "reward_seeds": s.reward_seeds,
                "reward_steps": self.measurer.reward_steps or "trial's own", "policy": s.policy,
                "min_reward_ratio": s.min_reward_ratio, "reward_reference": s.reward_reference}


@contextlib.contextmanager
def _heartbeat(storage: Any, trial_id: int, interval_s: int) -> Iterator[None]:
    """Beat for a running trial, so a dead worker's trial goes stale and is retried elsewhere."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _open_tracker(settings: SearchSettings, storage_url: str) -> Any:
    """The MLflow StudyTracker, or None (with a warning) where autotune.tracking is unavailable."""
    try:
        from autotune.tracking import StudyTracker
    except ImportError as exc:
        log.warning("MLflow tracking unavailable (%s); the search runs without it", exc)
        return None
    return StudyTracker(study_name=settings.study, storage_url=storage_url, tracking_uri=settings.tracking_uri)


def run_search(settings: SearchSettings, **kwargs: Any) -> SearchOutcome:
    """Run `autotune search` as a library call; see Controller."""
    return Controller(settings, **kwargs).run()
