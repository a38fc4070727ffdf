"""The controller: an Optuna multi-objective study that runs trials, learns from them, and advises.

One worker thread per GPU group (one or more for the CPU) repeats: claim a trial (ask; the claim
protocol is autotune.tuner.claims), build its config, run it as a subprocess, tell Optuna, log it,
and let the advisor queue a targeted follow-up. What the trials run on and against which budget is
autotune.tuner.search_plan; the settings and their checks are autotune.tuner.settings.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune import schema
from autotune.attrs import (  # the owner names are re-exported: tests and older callers import them from here
    USER_ATTR_CANCELLED,
    USER_ATTR_CONFIG,
    USER_ATTR_INVALID,
    USER_ATTR_OWNER as USER_ATTR_OWNER,
    USER_ATTR_OWNER_TRIAL as USER_ATTR_OWNER_TRIAL,
    USER_ATTR_REASON,
    USER_ATTR_RESULT,
)
from autotune.config import MemoryConfig, TrialConfig
from autotune.errors import ConfigError, NoFeasibleTrialError
from autotune.result import TrialRecord, TrialResult
from autotune.tuner import advisor, step_time, study as studies
from autotune.tuner.by_gpu import GpuRow, by_gpu, table_markdown
from autotune.tuner.claims import Claims, ClaimState
from autotune.tuner.convergence import progress_metrics
from autotune.tuner.definition import study_definition
from autotune.tuner.interrupts import deferred_signals, signals_to_flag
from autotune.tuner.launcher import end_all
from autotune.tuner.measure import Measurer
from autotune.tuner.optuna_internals import trial_id
from autotune.tuner.recommend import (
    Policy,
    Recommendation,
    recommend_study,
    store_policy,
    summary,
    write_outputs,
)
from autotune.tuner.scoring import score
from autotune.tuner.search_plan import (  # gpu_groups and with_budget re-exported for their importers
    SearchPlan,
    gpu_groups as gpu_groups,
    plan_search,
    with_budget as with_budget,
)
from autotune.tuner.settings import SearchSettings
from autotune.tuner.space import SearchSpace, apply_params, distributions, params_for, suggest

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

_WAIT_S = 0.5
_KILL_WAIT_S = 15.0     # how long an interrupted run waits for its workers to end their trials


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


def _definition(space: SearchSpace, settings: SearchSettings, budget_gb: float) -> dict[str, object]:
    """What defines this study (autotune.tuner.definition): a resume or a joining worker must match it."""
    return study_definition(directions={o.metric: o.direction for o in space.objectives},
                            ranges=distributions(space), base=space.base.to_dict(), budget_gb=budget_gb,
                            reward_run={"seeds": settings.reward_seeds, "proxy": settings.reward_proxy,
                                        "steps": settings.reward_steps})


class Controller:
    """Runs one search invocation against a (possibly shared) study. Use `run()` once."""

    def __init__(self, settings: SearchSettings, *, plan: SearchPlan | None = None,
                 on_record: Callable[[TrialRecord, list[TrialRecord]], None] | None = None,
                 on_note: Callable[[str], None] | None = None):
        """
        Args:
            settings: The invocation.
            plan: `plan_search(settings)`, when the caller made it already (the CLI prints its
                budget line first); None: made here.
            on_record: Called with each new record and the study's records.
            on_note: Called with each one-line note the measurement makes.
        """
        settings.check()
        if plan is not None and plan.settings is not settings:
            raise ValueError("the search plan was made from other settings")
        self.settings = settings
        self.plan = plan if plan is not None else plan_search(settings)
        self.budget = self.plan.budget
        self.budget_gb: float = self.budget.gb
        self.space = self.plan.space
        self.gpu_groups = self.plan.gpu_groups
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
                                 budget_gb=self.budget_gb, gpus=self.plan.gpus, prescreen=settings.prescreen,
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
        self._signals: list[int] = []
        self._busy = 0                     # workers still running
        self._all_done = threading.Event()
        self.claims = Claims(self.study, self.storage, n_trials=settings.n_trials,
                             grace_s=settings.grace_period_s or 2 * settings.heartbeat_interval_s,
                             deadline=None if settings.timeout_s is None else time.monotonic() + settings.timeout_s)

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
                with self.lock:
                    claim = self.claims.claim(before_ask=self._enqueue_next_proposal)
                if claim.state == ClaimState.DONE:
                    return
                if claim.trial is None:   # ClaimState.WAIT
                    self.cancel.wait(_WAIT_S)
                    continue
                self._run_one(claim.trial, gpu)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self._errors.append(exc)
            self.cancel.set()
        finally:
            with self.lock:
                self._busy -= 1
                if self._busy == 0:
                    self._all_done.set()

    def _run_one(self, trial: optuna.Trial, gpu: str | None) -> None:
        start = time.perf_counter()
        config, reason = self._config_for(trial)
        trial.set_user_attr(USER_ATTR_REASON, reason)
        trial_dir = self.trials_dir / str(trial.number)
        try:
            with _heartbeat(self.storage, trial_id(trial), self.settings.heartbeat_interval_s):
                result, subprocess_s = self._execute(trial, config, trial_dir, gpu)
        except BaseException:
            # e.g. runs/<study>/trials turned read-only: back to the queue, not RUNNING forever
            with self.lock:
                self.claims.release(trial, USER_ATTR_CANCELLED, requeue=True)
            raise
        if result is None:       # cancelled: the config goes back to the queue for the resumed run
            with self.lock:
                self.claims.release(trial, USER_ATTR_CANCELLED, requeue=True)
            return
        record = self._tell(trial, config, result, reason)
        self._after(record, trial_dir)
        self._timings.append((time.perf_counter() - start, subprocess_s))

    def _config_for(self, trial: optuna.Trial) -> tuple[TrialConfig, str | None]:
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

    def _execute(self, trial: optuna.Trial, config: TrialConfig, trial_dir: Path,
                 gpu: str | None) -> tuple[TrialResult | None, float]:
        invalid = trial.user_attrs.get(USER_ATTR_INVALID)
        if invalid is not None:
            return TrialResult(config_hash=config.config_hash(), status="prescreened", backend=config.device,
                               message=f"invalid config: {invalid}"), 0.0
        measured = self.measurer.measure(config, trial_dir, gpu)
        return measured.result, measured.subprocess_s

    def _tell(self, trial: optuna.Trial, config: TrialConfig, result: TrialResult, reason: str | None) -> TrialRecord:
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

    def _enqueue_next_proposal(self, trials: list[FrozenTrial]) -> None:
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
                                          by_gpu=[row.to_dict() for row in rows], reward_proxy=self.measurer.proxy)
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
                "seed": s.seed, "budget_gb": self.budget_gb, "gpus": ",".join(self.plan.gpus) or "cpu",
                "advisor": s.advisor, "prescreen": s.prescreen, "storage": self.storage_url,
                "budget_note": self.budget.note, "memory_mode": self.measurer.mode,
                "reward_proxy": self.measurer.proxy or "none", "reward_seeds": s.reward_seeds,
                "reward_steps": self.measurer.reward_steps or "trial's own", "policy": s.policy,
                "min_reward_ratio": s.min_reward_ratio, "reward_reference": s.reward_reference}


@contextlib.contextmanager
def _heartbeat(storage: RDBStorage, trial_id: int, interval_s: int) -> Iterator[None]:
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
    """Run `autotune search` as a library call; see Controller (and plan_search for where trials run)."""
    return Controller(settings, **kwargs).run()
